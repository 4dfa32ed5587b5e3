"""How each tier sees a sample, against the teacher: the cloud's per-tier inputs.

A tier whose vision tower weights and prompter equal the teacher's (the built-in zoo's shared front-end)
has the teacher's *view*: its devices upload visual tokens the teacher reads, and the teacher's targets
serve it as they are. Any other tier has a view of its own: its devices upload images, and the cloud turns
the teacher's targets into that tier's own inputs (``akd.student_targets``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from fl_sim import FlSimError
from fl_sim.device import model_cache
from fl_sim.mechanisms import akd
from fl_sim.models.mllm import visual_tokens

log = logging.getLogger(__name__)

TEACHER = "teacher"


class Views:
    """The view of every tier of a run (found on first use) and what depends on it: each view's prompter,
    its targets of a round, and its anchor of labelled source samples."""

    def __init__(self, model_paths: dict[str, str], tiers: list[str], catalog, akd_cfg, seed: int):
        """``catalog``: the run's ``DomainCatalog`` (its cache and the shared tokenizer's user words)."""
        self.model_paths, self.tiers, self.akd, self.seed = model_paths, tiers, akd_cfg, seed
        self.catalog, self.cache_dir = catalog, catalog.cache_dir
        self._views: dict[str, str] | None = None
        self._anchors: dict[str, dict] = {}
        self._warned: set[tuple[str, str]] = set()  # (view, what) whose rows that do not fit were warned of

    def _unfit(self, view: str, what: str, unfit: int, total: int) -> None:
        if unfit and (view, what) not in self._warned:
            self._warned.add((view, what))
            pr = self.prompter(view)
            log.warning("%s: %d of %d %s do not fit %s's %d positions (its prompt and the answer in its own tokens) "
                        "and are not distilled; results.jsonl counts them per round (akd_unfit_rows); shown once",
                        view, unfit, total, what, view, pr.max_len)

    def prompter(self, role: str):
        return model_cache.prompter_for(self.model_paths[role], self.cache_dir, self.catalog)

    def width(self, role: str) -> int:
        """The hidden size of ``role``'s language model."""
        return model_cache.base_model(self.model_paths[role]).config.get_text_config().hidden_size

    def of(self, tier: str) -> str:
        """``"teacher"`` when ``tier`` sees samples as the teacher does, else the tier's own name."""
        if self._views is None:
            t = self.model_paths[TEACHER]
            views = {}
            for name in self.tiers:
                shared = model_cache.same_view(t, self.model_paths[name], self.cache_dir, self.catalog)
                views[name] = TEACHER if shared else name
                if not shared:
                    reads = self.prompter(name).identity == self.prompter(TEACHER).identity
                    if not reads and self.akd.w_ce + self.akd.w_feat <= 0:
                        raise FlSimError(f"tier {name} reads text its own way, so AKD has no logit KL for it: "
                                         "strategy.akd needs w_ce or w_feat > 0")
                    log.warning("tier %s does not see samples as the teacher does (%s): its devices upload images "
                                "(the regions of the visual tokens UTS keeps, unless strategy.uts says whole images)%s",
                                name, "another vision tower" if reads else "its own tokenizer or visual tokens",
                                "" if reads else "; AKD has no logit KL for it and distils pooled features")
            self._views = views
        return self._views[tier]

    def used(self) -> set[str]:
        return {self.of(t) for t in self.tiers}

    def uts_for(self, tier: str, uts):
        """The UTS settings of ``tier``'s devices: when its view is its own, the image regions of the tokens UTS
        keeps instead of the tokens (whole images with ``tokens = "off"``, or when asked for images)."""
        if self.of(tier) == TEACHER or uts.upload == "images":
            return uts
        return uts.model_copy(update={"upload": "images" if uts.tokens == "off" else "regions"})

    def targets(self, view: str, targets: dict, questions: list[str], images: list) -> tuple[dict, int]:
        """The teacher's ``targets`` (one row per question) as ``view``'s own inputs: its tower's tokens of the
        uploaded images and, when it reads text its own way, its token ids (``akd.student_targets``); and how
        many rows do not fit its positions (counted, warned of once, not distilled). Samples uploaded as
        visual tokens of the teacher's tower have no image for it and are skipped."""
        pr_t, pr = self.prompter(TEACHER), self.prompter(view)
        same_ids = pr.identity == pr_t.identity
        answers = akd.pseudo_labels(targets, pr_t)
        seen = [i for i, im in enumerate(images) if im is not None]
        rows = [i for i in seen if akd.fits(pr, questions[i], answers[i])]
        self._unfit(view, "uploaded rows", len(seen) - len(rows), len(seen))
        unfit = len(seen) - len(rows)
        if not rows:
            return {}, unfit
        model = model_cache.base_model(self.model_paths[view])
        vis = visual_tokens(model, pr.pixels(np.stack([images[i] for i in rows])))
        sub = akd.take(targets, rows)
        if same_ids:  # the same token ids: every target but the visual tokens carries over
            return sub | {"vis": vis}, unfit
        return akd.student_targets(pr, vis, [questions[i] for i in rows], sub, [answers[i] for i in rows]), unfit

    def anchor(self, view: str = TEACHER) -> dict:
        """The cloud's labelled source samples (the domain it pretrained the devices on), built once per view.

        Drawn from the source stream with a seed of their own, so they are not the devices' samples."""
        if self.akd.anchor <= 0:
            return {}
        if view not in self._anchors:
            pr = self.prompter(view)
            model = model_cache.base_model(self.model_paths[view])
            teacher = model_cache.base_model(self.model_paths[TEACHER])
            ds = model_cache.split("source", "train", self.akd.anchor_size, 10_000 + self.seed, self.cache_dir)
            questions, answers = list(ds["question"]), list(ds["answer"])
            rows = [i for i, (q, a) in enumerate(zip(questions, answers)) if akd.fits(pr, q, a)]
            self._unfit(view, "anchor samples", len(questions) - len(rows), len(questions))
            if not rows:
                self._anchors[view] = {}
                return {}
            with torch.no_grad():
                vis = visual_tokens(model, pr.pixels(np.asarray(ds["image"])[rows]))
            self._anchors[view] = akd.anchor_targets(
                pr, vis, [questions[i] for i in rows], [answers[i] for i in rows],
                teacher.config.get_text_config().vocab_size, self.width(TEACHER),
                pooled=pr.identity != self.prompter(TEACHER).identity)
        return self._anchors[view]
