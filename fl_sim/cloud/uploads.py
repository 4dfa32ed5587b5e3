"""The cloud's first step: decode and check a round's uploads into the teacher's inputs.

Malformed uploads are rejected (logged and counted), never a crash; a larger upload than its device was
asked for is rejected before the cloud allocates anything for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from fl_sim import ceil_share
from fl_sim.cloud.views import TEACHER, Views
from fl_sim.device import model_cache
from fl_sim.mechanisms import uts
from fl_sim.models.mllm import visual_tokens
from fl_sim.protocol.records import record_values, unpack_arrays

log = logging.getLogger(__name__)


@dataclass
class Uploads:
    """A round's accepted uploads, one row per sample."""
    vis: torch.Tensor  # (n, tokens, width): the teacher's visual tokens
    questions: list[str]
    images: list = field(default_factory=list)  # uint8 image per sample, or None when it came as visual tokens
    rejected: int = 0


def upload_limits(u, samples_per_round: int, n_tokens: int) -> dict:
    """What a device with UTS settings ``u`` was asked to upload (``uts.decode_upload``'s limits)."""
    tokens = u.upload == "tokens"
    return {"max_samples": ceil_share(u.budget, samples_per_round) if u.method != "off" else samples_per_round,
            "token_bits": u.token_bits if tokens else None,
            "max_tokens": ceil_share(u.keep_tokens, n_tokens) if tokens and u.tokens != "off" else None}


def decode_uploads(kept: list, tiers: dict[int, str], views: Views, uts_cfg, max_new_tokens: int,
                   samples_per_round: int, server_round: int) -> Uploads:
    """The uploads of ``kept`` (``[(device id, reply, metrics)]``; ``tiers``: device id -> tier) as the
    teacher's inputs; a device's images go through the teacher's own tower."""
    teacher_path = views.model_paths[TEACHER]
    pr = views.prompter(TEACHER)
    teacher = model_cache.base_model(teacher_path)
    ref = model_cache.reference_token(teacher_path, views.cache_dir)
    n_tok, dim = pr.n_visual, ref.shape[0]
    vis, questions, images, rejected = [], [], [], 0
    for dev, rep, _ in kept:
        if "upload" not in rep.content:
            continue
        tier = tiers[dev]
        u, pr_dev = views.uts_for(tier, uts_cfg), views.prompter(tier)
        try:
            record = rep.content["upload"]
            if list(record.keys()) != ["packed"]:
                raise uts.PayloadError(f"upload record holds {sorted(record.keys())}, expected ['packed']")
            arrays = unpack_arrays(record_values(record)["packed"])
            up = uts.decode_upload(arrays, n_tok, dim, len(pr_dev.tok), ref, model_cache.IMAGE_SHAPE,
                                   **upload_limits(u, samples_per_round, n_tok))
            kind = "regions" if "regions" in up else "images" if "images" in up else "tokens"
            if kind != u.upload:
                raise uts.PayloadError(f"upload kind {kind!r} does not match the {u.upload!r} its device was asked for")
            texts = [pr_dev.tok.decode(q, skip_special_tokens=True) for q in up["questions"]]
            # the teacher's answer and EOS follow the prompt (a tier's own positions are counted per row:
            # views.targets)
            room = pr.max_len - max_new_tokens - 1
            if any(len(pr.prompt(t)) > room for t in texts):
                raise uts.PayloadError(f"upload question longer than the {room} prompt positions the teacher has")
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
    return Uploads(torch.cat(vis) if vis else torch.zeros(0, n_tok, dim), questions, images, rejected)
