"""cdcca: CD-CCA on the fleet. Devices upload what they are unsure of (UTS), the cloud distils the
teacher into per-tier adapters (AKD), and sends back compressed adapter updates (DWC).

Device half: ``clients/cdcca_device.py``. Round ``r``:

1. Each sampled device receives the DWC downlink that takes the version it holds to its tier's latest
   version: the chain of stored payloads (``dwc_chain``, a list of ``bytes`` in the task record: Flower
   frames an Array with about 450 bytes and a record with about 150, a ``bytes`` value in a record with
   about 20), or a dense refresh (``dwc_full``) when that is smaller (a device that missed rounds
   catches up exactly). It applies it, answers its stream, and uploads the UTS selection.
2. The cloud validates uploads (malformed ones are rejected, logged and counted), lets the teacher label
   them once (pseudo-labels, logits, hidden states), and trains each tier's cloud copy with AKD on this
   round's uploads plus a replay buffer of earlier ones.
3. DWC: the cloud copy's change (plus the error-feedback residual) is compressed into version ``v + 1``;
   ``held = held + decode(payload)`` is what devices of the tier will hold, and what evaluation measures.
   Versions live in a ``VersionStore`` (``<run dir>/dwc``) that the devices read the weights they hold from.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from clients.cdcca_device import CDCCADevice, CDCCADeviceSettings
from fl_sim import FlSimError, ceil_share
from fl_sim.cache import read_meta
from fl_sim.cloud import question_job, tier_job, worker_pool
from fl_sim.device import model_cache
from fl_sim.mechanisms import akd, dwc, uts
from fl_sim.models import placement
from fl_sim.models.mllm import visual_tokens
from fl_sim.protocol.records import (
    config_value_bytes,
    pack_arrays,
    payload_bytes,
    record_values,
    to_array_record,
    unpack_arrays,
)
from fl_sim.protocol.version_store import VersionStore
from fl_sim.server.strategy import FleetStrategy

log = logging.getLogger(__name__)


class CDCCA(FleetStrategy):
    name = "cdcca"
    device = CDCCADevice

    def __init__(self, ctx):
        super().__init__(ctx)
        self.uts, self.akd, self.dwc = self.s.uts, self.s.akd, self.s.dwc
        self.store = VersionStore(self.store_dir(ctx.run_dir))
        self.version = {t: 0 for t in self.tiers}
        self.dev_version: dict[int, int] = {}
        self.buffers: dict[str, akd.ReplayBuffer] = {}  # per view (``_view``): "teacher", or a tier's own
        self.rejected = {"uploads": 0, "downlink": 0}
        self.needs_full: set[int] = set()  # devices whose last downlink failed: send them a dense refresh
        self._chains: dict = {}
        self._anchor_targets: dict | None = None  # built on first use (see ``_anchor``)
        self._views: dict[str, str] | None = None  # tier -> view, found on first use (see ``_view``)
        if self._workers():  # they import torch while round 1's devices run
            worker_pool.shared(self._workers())

    @classmethod
    def store_dir(cls, run_dir):
        return (Path(run_dir) / "dwc").resolve()

    # ------------------------------------------------------------- state: cloud copy, held weights, residual
    def _group(self, kind: str, tier: str) -> str:
        return f"{kind}.{tier}"

    def init_state(self):
        state = {}
        for t in self.tiers:
            init = self.initial_state(t)
            state[self._group("cloud", t)] = {k: v.clone() for k, v in init.items()}
            state[self._group("held", t)] = {k: v.clone() for k, v in init.items()}
            state[self._group("ef", t)] = {}
            torch.manual_seed(self.cfg.seed)
            align = torch.nn.Linear(self._width(t), self._width("teacher"))
            state[self._group("align", t)] = {k: v.detach().clone() for k, v in align.state_dict().items()}
        return state

    def _width(self, role: str) -> int:
        return model_cache.base_model(self.ctx.model_paths[role]).config.text_config.hidden_size

    # ------------------------------------------------------------- views: how each model sees a sample
    def _prompter(self, role: str):
        return model_cache.prompter_for(self.ctx.model_paths[role], self.cfg.cache_dir)

    def _view(self, tier: str) -> str:
        """``"teacher"`` when the tier sees samples as the teacher does (the same vision tower weights and
        prompter: the built-in zoo's shared front-end), so its devices' visual tokens serve the teacher and
        the teacher's targets serve it as they are; else the tier's name: its devices upload images and
        the cloud turns the teacher's targets into its own inputs (``akd.student_targets``)."""
        if self._views is None:
            t = self.ctx.model_paths["teacher"]
            views = {}
            for name in self.tiers:
                shared = model_cache.same_view(t, self.ctx.model_paths[name], self.cfg.cache_dir)
                views[name] = "teacher" if shared else name
                if not shared:
                    reads = self._prompter(name).identity == self._prompter("teacher").identity
                    if not reads and self.akd.w_ce + self.akd.w_feat <= 0:
                        raise FlSimError(f"tier {name} reads text its own way, so AKD has no logit KL for it: "
                                         "strategy.akd needs w_ce or w_feat > 0")
                    log.warning("tier %s does not see samples as the teacher does (%s): its devices upload images%s",
                                name, "another vision tower" if reads else "its own tokenizer or visual tokens",
                                "" if reads else "; AKD has no logit KL for it and distils pooled features")
            self._views = views
        return self._views[tier]

    def _uts(self, tier: str):
        """The UTS settings of ``tier``'s devices: images instead of visual tokens when its view is its own."""
        return self.uts if self._view(tier) == "teacher" else self.uts.model_copy(update={"upload": "images"})

    def _buffer(self, view: str) -> akd.ReplayBuffer:
        if view not in self.buffers:
            self.buffers[view] = akd.ReplayBuffer(self.akd.replay, self.cfg.seed)
        return self.buffers[view]

    @staticmethod
    def _replay_group(view: str) -> str:
        return "replay" if view == "teacher" else f"replay.{view}"

    def device_weights(self, tier):
        return self.state[self._group("held", tier)]

    def checkpoint_state(self):
        for view, buf in self.buffers.items():
            self.state[self._replay_group(view)] = buf.state()
        return super().checkpoint_state() | {
            "version": self.version, "dev_version": {str(k): v for k, v in self.dev_version.items()},
            "rejected": self.rejected, "needs_full": sorted(self.needs_full)}

    def restore(self, state, tensors):
        r = super().restore(state, tensors)
        self.version = {t: int(v) for t, v in state["version"].items()}
        self.dev_version = {int(k): int(v) for k, v in state["dev_version"].items()}
        self.rejected = dict(state["rejected"])
        self.needs_full = set(state.get("needs_full", []))
        for group, t in tensors.items():
            if group == "replay" or group.startswith("replay."):
                self._buffer("teacher" if group == "replay" else group.split(".", 1)[1]).load_state(t)
        return r

    # ------------------------------------------------------------- downlink
    REQUIRED_METRICS = FleetStrategy.REQUIRED_METRICS + ("version", "downlink_rejected", "uploaded")

    def device_settings(self, p, server_round) -> CDCCADeviceSettings:
        return CDCCADeviceSettings(held_version=self.dev_version.get(p.device_id, 0),
                                   target_version=self.version[p.tier], uts=self._uts(p.tier))

    def downlink_records(self, p, server_round):
        """The cheaper of the payload chain ``held -> latest`` and a dense refresh (cached per tier/version)."""
        u, v = self.dev_version.get(p.device_id, 0), self.version[p.tier]
        if u == v:
            return {}
        if p.device_id in self.needs_full:
            return {"dwc_full": to_array_record(self.device_weights(p.tier))}
        key = (p.tier, u, v)
        if key not in self._chains:
            chain = self.store.chain(p.tier, u, v)
            full = to_array_record(self.device_weights(p.tier))
            small = config_value_bytes("dwc_chain", chain) <= payload_bytes(full)
            self._chains[key] = {"task": {"dwc_chain": chain}} if small else {"dwc_full": full}
        return self._chains[key]

    def configure_train(self, server_round, arrays=None, config=None, grid=None):
        self._chains = {}
        return super().configure_train(server_round, arrays, config, grid)

    # ------------------------------------------------------------- cloud side of the round
    def _decode_uploads(self, kept: list, server_round: int) -> tuple[torch.Tensor, list[str], list, int]:
        """``(teacher's visual tokens, question texts, images or None per sample, rejected uploads)``."""
        pr = self._prompter("teacher")
        teacher = model_cache.base_model(self.ctx.model_paths["teacher"])
        ref = model_cache.reference_token(self.ctx.model_paths["teacher"], self.cfg.cache_dir)
        n_tok, dim = pr.n_image, ref.shape[0]
        vis, questions, images, rejected = [], [], [], 0
        for dev, rep, _ in kept:
            if "upload" not in rep.content:
                continue
            tier = self.ctx.fleet[dev].tier
            u, pr_dev = self._uts(tier), self._prompter(tier)
            try:
                record = rep.content["upload"]
                if list(record.keys()) != ["packed"]:
                    raise uts.PayloadError(f"upload record holds {sorted(record.keys())}, expected ['packed']")
                arrays = unpack_arrays(record_values(record)["packed"])
                up = uts.decode_upload(arrays, n_tok, dim, len(pr_dev.tok), ref, model_cache.IMAGE_SHAPE,
                                       **self.upload_limits(n_tok, u))
                if "images" in up and u.upload != "images" or "vis" in up and u.upload == "images":
                    raise uts.PayloadError(f"upload kind does not match the {u.upload!r} its device was asked for")
                texts = [pr_dev.tok.decode(q, skip_special_tokens=True) for q in up["questions"]]
                for p in (pr, pr_dev):  # the teacher's answer and EOS follow the prompt
                    room = p.max_len - self.akd.max_new_tokens - 1
                    if any(len(p.prompt(t)) > room for t in texts):
                        raise uts.PayloadError(f"upload question longer than the {room} prompt positions the cloud "
                                               "has")
            except Exception as exc:  # noqa: BLE001 - whatever is wrong with an upload, reject it, never crash
                rejected += 1
                log.warning("round %d: rejected upload of device %d: %s", server_round, dev, exc)
                continue
            if not up["questions"]:
                continue
            if "images" in up:
                images += list(up["images"])
                up["vis"] = visual_tokens(teacher, pr.pixels(up["images"]))  # the teacher's own tower
            else:
                images += [None] * len(texts)
            vis.append(up["vis"])
            questions += texts
        return (torch.cat(vis) if vis else torch.zeros(0, n_tok, dim)), questions, images, rejected

    def _view_targets(self, view: str, targets: dict, questions: list[str], images: list) -> dict:
        """The teacher's ``targets`` (one row per question) as tier ``view``'s own inputs: its tower's tokens
        of the uploaded images and, when it reads text its own way, its token ids (``akd.student_targets``).
        Samples uploaded as visual tokens of the teacher's tower have no image for it and are skipped."""
        pr_t, pr = self._prompter("teacher"), self._prompter(view)
        same_ids = pr.identity == pr_t.identity
        answers = akd.pseudo_labels(targets, pr_t)
        rows = [i for i, im in enumerate(images) if im is not None and  # its own ids must fit its positions
                len(pr.prompt(questions[i])) + len(pr.words(answers[i])) + 1 <= pr.max_len]
        if not rows:
            return {}
        model = model_cache.base_model(self.ctx.model_paths[view])
        vis = visual_tokens(model, pr.pixels(np.stack([images[i] for i in rows])))
        sub = akd.take(targets, rows)
        if same_ids:  # the same token ids: every target but the visual tokens carries over
            return sub | {"vis": vis}
        return akd.student_targets(pr, vis, [questions[i] for i in rows], sub, [answers[i] for i in rows])

    def upload_limits(self, n_tokens: int, u=None) -> dict:
        """What a device was asked to upload (``uts.decode_upload``'s limits; ``u``: its UTS settings): a
        larger upload is rejected before the cloud allocates anything for it."""
        u, n = u or self.uts, self.cfg.fleet.samples_per_round
        tokens = u.upload == "tokens"
        return {"max_samples": ceil_share(u.budget, n) if u.method != "off" else n,
                "token_bits": u.token_bits if tokens else None,
                "max_tokens": ceil_share(u.keep_tokens, n_tokens) if tokens and u.tokens != "off" else None}

    def _tier_job(self, tier: str, new: dict, server_round: int, threads: int) -> tier_job.TierJob:
        """The tier's AKD round as a job (``fl_sim.cloud.tier_job``): its state, and every batch drawn now, half
        this round's targets ``new`` and half the replay buffer, plus the anchor's share.

        DWC-aware training (``strategy.dwc.sparse_train``) trains only the entries the next payload can
        carry: with seeded selection those are known in advance (``dwc.train_mask``); otherwise
        ``probe_steps`` dense AKD steps on a throw-away copy of ``align`` move every entry, and the
        ``max_density`` share with the largest probe change plus error-feedback residual is what the round
        trains (``tier_job.run``)."""
        view = self._view(tier)
        buffer = self._buffer(view)
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, 13, server_round, self.tiers.index(tier)]))
        bs = self.akd.batch_size
        anchor = self._anchor(view)
        k_anchor = round(self.akd.anchor * bs) if anchor else 0
        bs -= k_anchor

        def draw():
            n_new = akd.size(new)
            k_new = min(n_new, bs if len(buffer) == 0 else bs // 2)
            parts = [("new", rng.choice(n_new, size=k_new, replace=False))] if k_new else []
            rows = buffer.sample_indices(bs - k_new, rng)
            parts += [("replay", rows)] if rows is not None else []
            if k_anchor:
                parts.append(("anchor", rng.choice(akd.size(anchor), size=k_anchor, replace=False)))
            return parts

        ss = np.random.SeedSequence([self.cfg.seed, 17, server_round, self.tiers.index(tier)])
        seed = int(ss.generate_state(1)[0])
        cloud = self.state[self._group("cloud", tier)]
        masks = probe = None
        if self.dwc.sparse_train and self.dwc.select:  # DWC-aware training
            if self.dwc.selection == "random":  # the next payload's seeded entries: no probe
                masks = dwc.train_mask(cloud, self.dwc, self._payload_seed(tier))
            else:
                probe = self.dwc
        n_draws = self.akd.steps + (self.dwc.probe_steps if probe is not None else 0)
        table, plan = tier_job.plan_batches([draw() for _ in range(n_draws)],
                                            {"new": new, "replay": buffer.data, "anchor": anchor})
        residual = self.state[self._group("ef", tier)] if probe is not None and self.dwc.error_feedback else {}
        return tier_job.TierJob(self.ctx.model_paths[tier], self.s.adapters(), self.akd, seed, cloud,
                                self.state[self._group("align", tier)], table, plan, masks, probe, dict(residual),
                                threads)

    def _train_tiers(self, tiers: list[str], new: dict, server_round: int) -> dict[str, tier_job.TierResult]:
        """Every tier's AKD round: side by side in worker processes (``strategy.akd.workers``) or here."""
        workers = self._workers() if len(tiers) > 1 else 0
        threads = 1 if workers else torch.get_num_threads()  # side by side: single-threaded
        jobs = [self._tier_job(t, new.get(self._view(t), {}), server_round, threads) for t in tiers]
        if workers:
            results = worker_pool.shared(workers).run(jobs)
        else:
            results = [tier_job.run(job) for job in jobs]
        return dict(zip(tiers, results))

    def _workers(self) -> int:
        fp32_cpu = placement.current().type == "cpu" and not placement.autocasts()
        return worker_pool.workers_for(self.akd, len(self.tiers), fp32_cpu)

    def _apply_tier(self, tier: str, result: tier_job.TierResult, server_round: int) -> dict:
        """Take the tier's trained adapters as its cloud copy; returns the losses (``{}``: diverged, dropped)."""
        if not all(torch.isfinite(t).all() for t in result.cloud.values()):
            log.warning("round %d: AKD diverged for %s (non-finite weights); update discarded", server_round, tier)
            return {}
        self.state[self._group("cloud", tier)] = result.cloud
        self.state[self._group("align", tier)] = result.align
        return result.losses

    def _questions_job(self, vis: torch.Tensor, questions: list[str], server_round: int) -> question_job.QuestionsJob:
        """``akd.extra_questions``: the teacher captions each upload and answers more questions about it,
        generated from its own caption (``akd.question_targets``)."""
        from fl_sim.world.user_data import USER_DOMAINS

        return question_job.QuestionsJob(
            self.ctx.model_paths["teacher"], self.akd.teacher_int8, self.cfg.cache_dir, vis, questions,
            self.akd.extra_questions, [self.cfg.seed, 23, server_round], self.akd.max_new_tokens,
            torch.get_num_threads(),
            {n: d.model_dump(mode="json") for n, d in USER_DOMAINS.items()}, self.akd.teacher_states)

    def _payload_seed(self, tier: str) -> int:
        """The seed of the tier's next payload (``selection = "random"`` keeps the entries it picks)."""
        ss = np.random.SeedSequence([self.cfg.seed, 19, self.tiers.index(tier), self.version[tier] + 1])
        return int(ss.generate_state(1, np.uint64)[0])

    def _anchor(self, view: str = "teacher") -> dict:
        """The cloud's labelled source samples (the domain it pretrained the devices on), built once per view.

        Drawn from the source stream with a seed of their own, so they are not the devices' samples."""
        if self.akd.anchor <= 0:
            return {}
        if self._anchor_targets is None:
            self._anchor_targets = {}
        if view not in self._anchor_targets:
            pr = self._prompter(view)
            model = model_cache.base_model(self.ctx.model_paths[view])
            teacher = model_cache.base_model(self.ctx.model_paths["teacher"])
            ds = model_cache.split("source", "train", self.akd.anchor_size, 10_000 + self.cfg.seed, self.cfg.cache_dir)
            with torch.no_grad():
                vis = visual_tokens(model, pr.pixels(np.asarray(ds["image"])))
            self._anchor_targets[view] = akd.anchor_targets(
                pr, vis, list(ds["question"]), list(ds["answer"]), teacher.config.text_config.vocab_size,
                self._width("teacher"), pooled=pr.identity != self._prompter("teacher").identity)
        return self._anchor_targets[view]

    def _compress(self, tier: str, before: dict, after: dict) -> dict:
        """DWC: new version ``v + 1`` of what devices of ``tier`` hold; returns its figures."""
        ef = dwc.ErrorFeedback(self.dwc)
        if self.state[self._group("ef", tier)]:
            ef.load_state(self.state[self._group("ef", tier)])
        delta = {k: after[k] - before[k] for k in after}
        payload, sent = ef.step(delta, self._payload_seed(tier))
        self.state[self._group("ef", tier)] = ef.state()
        held = dwc.apply(self.state[self._group("held", tier)], sent)
        v = self.version[tier] + 1
        self.store.put(tier, v, payload, held)
        self.state[self._group("held", tier)] = held
        self.version[tier] = v
        wire = config_value_bytes("dwc_chain", [payload])  # what it adds to the message of a device one version behind
        dense_payload = pack_arrays({k: t.float().numpy() for k, t in delta.items()}).tobytes()
        dense = config_value_bytes("dwc_chain", [dense_payload])
        return {"payload_bytes": wire, "ratio_dense": dense / wire,
                "ratio_checkpoint": read_meta_bytes(self.ctx.model_paths[tier]) / wire}

    def update(self, server_round, kept, replied, plan):
        t0 = time.time()
        rejected_down = 0
        for dev, rep, m in replied:  # every device that answered applied (or rejected) its downlink
            sent = plan.tasks[dev].settings
            held, target = sent["held_version"], sent["target_version"]
            version = int(m["version"])
            if m["downlink_rejected"] or version not in (held, target, 0):
                rejected_down += 1
                reason = rep.content["status"]["downlink_error"] if "status" in rep.content else f"version {version}"
                log.warning("round %d: device %d rejected its downlink: %s", server_round, dev, reason)
                self.needs_full.add(dev)
            else:
                self.needs_full.discard(dev)
            if version in (held, target, 0):
                self.dev_version[dev] = version
        phases: dict[str, float] = {}  # wall seconds of each step of the cloud's work (``cloud_phases_s``)
        clock = [time.time()]

        def lap(name):
            now = time.time()
            phases[name] = phases.get(name, 0.0) + now - clock[0]
            clock[0] = now

        vis, questions, images, rejected_up = self._decode_uploads(kept, server_round)
        lap("decode")
        self.rejected["uploads"] += rejected_up
        self.rejected["downlink"] += rejected_down
        pr = self._prompter("teacher")
        new = {}  # view -> this round's targets
        extra_asked = 0
        if questions:
            teacher = model_cache.labelling_model(self.ctx.model_paths["teacher"], self.akd.teacher_int8)
            labelled = akd.teacher_targets(teacher, pr, vis, questions, self.akd.max_new_tokens,
                                           states=self.akd.teacher_states)
            new["teacher"] = labelled
            lap("label")
            if self.akd.extra_questions:  # here: a worker asking them while this labels is slower (cloud_workers.py)
                more = question_job.run(self._questions_job(vis, questions, server_round))
                extra_asked = akd.size(more)
                new["teacher"] = akd.concat([labelled, more])
                lap("extra_questions")
            for view in sorted({self._view(t) for t in self.tiers} - {"teacher"}):
                new[view] = self._view_targets(view, labelled, questions, images)
            new = {v: akd.confident(t, self.akd.min_teacher_confidence) for v, t in new.items()}
            lap("targets")
        taught = akd.size(new.get("teacher", {}))  # the teacher's passes, whichever views use them
        used = {self._view(t) for t in self.tiers}
        new = {v: t for v, t in new.items() if v in used}  # the teacher's own targets only serve tiers of its view
        extra = {"uploaded_samples": len(questions), "extra_questions": extra_asked,
                 "distilled_samples": sum(akd.size(t) for t in new.values()),
                 "rejected_uploads": rejected_up, "rejected_downlinks": rejected_down}
        figures = {}
        training = [t for t in self.tiers if self.akd.steps and (akd.size(new.get(self._view(t), {}))
                                                                 or len(self._buffer(self._view(t))))]
        results = self._train_tiers(training, new, server_round)
        lap("akd")
        extra["akd_tier_s"] = {t: r.seconds for t, r in results.items()}  # each tier's training, side by side
        for tier, result in results.items():
            before = dict(self.state[self._group("cloud", tier)])
            losses = self._apply_tier(tier, result, server_round)
            if losses:
                figures[tier] = losses | self._compress(tier, before, self.state[self._group("cloud", tier)])
        lap("dwc")
        for view, targets in new.items():
            self._buffer(view).add(targets)
        lap("replay")
        extra["replay_size"] = len(self._buffer("teacher"))
        if figures:
            for key in ("loss", "ce", "kl", "feat", "payload_bytes", "ratio_dense", "ratio_checkpoint"):
                vals = [f[key] for f in figures.values() if key in f]
                if vals:
                    extra[f"akd_{key}" if key in ("loss", "ce", "kl", "feat") else f"dwc_{key}"] = float(np.mean(vals))
        n_passes = taught + len(figures) * self.akd.steps * self.akd.batch_size
        n_passes += len(questions) if self.akd.extra_questions else 0  # the teacher's captions
        extra["cloud_s"] = n_passes * self.akd.cloud_ms_per_sample / 1000
        extra["cloud_wall_s"] = time.time() - t0
        extra["cloud_phases_s"] = phases
        placement.release()
        return extra


def read_meta_bytes(model_path: str) -> int:
    """Bytes of a device checkpoint as stored on the device (from the zoo manifest; fp32 size otherwise)."""
    try:
        return int(read_meta(Path(model_path))["device_bytes"])
    except (OSError, KeyError, ValueError):
        return 4 * sum(p.numel() for p in model_cache.base_model(model_path).parameters())
