"""The cloud's third step: AKD for each tier's cloud copy, on this round's targets plus its view's replay buffer
(and the anchor's share of labelled source samples). Every batch is drawn here, up front, into a
``tier_job.TierJob``, so the training gives the same result in this process or in a worker."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from fl_sim.cloud import tier_job
from fl_sim.cloud.actors import ActorGroup, workers_for
from fl_sim.mechanisms import akd, dwc
from fl_sim.mechanisms.replay import ReplayBuffer
from fl_sim.models import placement

log = logging.getLogger(__name__)


@dataclass
class TierState:
    """What the cloud keeps for one tier between rounds (its groups of the strategy's checkpointed state)."""
    cloud: dict[str, torch.Tensor]  # the cloud copy's adapters
    align: dict[str, torch.Tensor]  # the student-to-teacher feature map
    residual: dict[str, torch.Tensor]  # DWC's error feedback


def draw_batches(rng: np.random.Generator, n_new: int, buffer: ReplayBuffer, batch_size: int, n_anchor: int,
                 k_anchor: int) -> list[tuple[str, np.ndarray]]:
    """One batch's parts ``[(source, rows)]``: half this round's ``n_new`` targets and half the replay buffer
    (all new while the buffer is empty), plus ``k_anchor`` anchor rows beyond ``batch_size``."""
    k_new = min(n_new, batch_size if len(buffer) == 0 else batch_size // 2)
    parts = [("new", rng.choice(n_new, size=k_new, replace=False))] if k_new else []
    rows = buffer.sample_indices(batch_size - k_new, rng)
    parts += [("replay", rows)] if rows is not None else []
    if k_anchor:
        parts.append(("anchor", rng.choice(n_anchor, size=k_anchor, replace=False)))
    return parts


def tier_job_for(model_path: str, adapters: tuple, akd_cfg, dwc_cfg, state: TierState, new: dict,
                 buffer: ReplayBuffer, anchor: dict, seed: int, server_round: int, tier_index: int,
                 payload_seed: int, threads: int) -> tier_job.TierJob:
    """The tier's AKD round as a job: its state, and every batch drawn now.

    DWC-aware training (``strategy.dwc.sparse_train``) trains only the entries the next payload can carry:
    with seeded selection those are known in advance (``dwc.train_mask`` with ``payload_seed``); otherwise
    ``probe_steps`` dense AKD steps on a throw-away copy move every entry, and the ``max_density`` share with
    the largest probe change plus error-feedback residual is what the round trains (``tier_job.run``)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 13, server_round, tier_index]))
    n_anchor = akd.size(anchor) if anchor else 0
    k_anchor = min(round(akd_cfg.anchor * akd_cfg.batch_size), n_anchor)  # a small anchor: all of it
    bs = akd_cfg.batch_size - k_anchor
    job_seed = int(np.random.SeedSequence([seed, 17, server_round, tier_index]).generate_state(1)[0])
    masks = probe = None
    if dwc_cfg.sparse_train and dwc_cfg.select:
        if dwc_cfg.selection == "random":  # the next payload's seeded entries: no probe
            masks = dwc.train_mask(state.cloud, dwc_cfg, payload_seed)
        else:
            probe = dwc_cfg
    n_draws = akd_cfg.steps + (dwc_cfg.probe_steps if probe is not None else 0)
    draws = [draw_batches(rng, akd.size(new), buffer, bs, n_anchor, k_anchor) for _ in range(n_draws)]
    table, plan = tier_job.plan_batches(draws, {"new": new, "replay": buffer.data, "anchor": anchor})
    residual = state.residual if probe is not None and dwc_cfg.error_feedback else {}
    return tier_job.TierJob(model_path, adapters, akd_cfg, job_seed, state.cloud, state.align, table, plan, masks,
                            probe, dict(residual), threads)


def akd_actors(akd_cfg, cloud_cfg, precision: str, n_tiers: int, lag: bool = False) -> ActorGroup:
    """The tiers' AKD actors (``fl_sim.cloud.actors.workers_for``): beside the cloud process, or holding
    every tier with ``cloud.akd_gpus`` or a lagging cloud (``lag``: the cloud process then works on the next
    round, so it trains none; ``"auto"`` gives one actor per tier)."""
    dev, bf16 = placement.current().type, placement.autocasts()
    n = workers_for(akd_cfg, cloud_cfg, n_tiers, dev, bf16)
    if lag and akd_cfg.workers == "auto" and n and cloud_cfg.akd_gpus <= 0:
        n = n_tiers
    return ActorGroup("akd", n, cloud_cfg.options("akd"), local=cloud_cfg.akd_gpus <= 0 and not lag,
                      precision=precision, start_timeout_s=cloud_cfg.start_timeout_s)


def accepted(result: tier_job.TierResult, tier: str, server_round: int) -> bool:
    """Whether the tier's trained adapters are finite (a diverged update is dropped, with a warning)."""
    if all(torch.isfinite(t).all() for t in result.cloud.values()):
        return True
    log.warning("round %d: AKD diverged for %s (non-finite weights); update discarded", server_round, tier)
    return False
