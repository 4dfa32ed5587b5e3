"""One tier's AKD round as data: everything the cloud trains a tier's adapters from, so that the training
runs in the cloud process or on a Ray actor (``fl_sim.cloud.actors``) with the same result.

The cloud draws the round's batches up front: ``plan`` holds one index array per step into ``table``, the
rows those batches use, so the job carries no random stream of the cloud's. With ``probe`` (DWC-aware
training, ``strategy.dwc.sparse_train`` with ``selection = "top"``) the first ``probe.probe_steps``
batches feed the dense probe that picks the entries the round trains, the next ``cfg.steps`` the round.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fl_sim.config import AKDConfig, DWCConfig
from fl_sim.device import model_cache
from fl_sim.mechanisms import akd, dwc
from fl_sim.models import placement
from fl_sim.models.adapters import adapter_state, load_adapter_state


@dataclass
class TierJob:
    model_path: str
    adapters: tuple  # model_cache.adapted_model's (lora_r, tokens, projector)
    cfg: AKDConfig
    seed: int
    cloud: dict[str, torch.Tensor]  # the cloud copy's adapter state before the round
    align: dict[str, torch.Tensor]  # the student-to-teacher feature map's state
    table: dict[str, torch.Tensor]  # the targets the round's batches are made of
    plan: list[np.ndarray]  # per batch, its rows of ``table`` in order
    masks: dict[str, torch.Tensor] | None = None  # entries to train (seeded DWC selection)
    probe: DWCConfig | None = None  # pick the entries by a dense probe first (top selection)
    residual: dict[str, torch.Tensor] = field(default_factory=dict)  # DWC error feedback the probe scores with
    threads: int = 1  # torch threads to train with: a kernel's float rounding can depend on their number


@dataclass
class TierResult:
    cloud: dict[str, torch.Tensor]
    align: dict[str, torch.Tensor]
    losses: dict[str, float]
    seconds: float  # wall time of ``run``


def run(job: TierJob) -> TierResult:
    """Train the tier's adapters as the job says (``akd.train_adapters``) with ``job.threads`` torch threads;
    the model is this process's copy."""
    t0 = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        return _run(job, t0)
    finally:
        torch.set_num_threads(threads)


def _run(job: TierJob, t0: float) -> TierResult:
    model, _ = model_cache.adapted_model(job.model_path, *job.adapters)
    load_adapter_state(model, job.cloud)
    out_dim, in_dim = job.align["weight"].shape
    align = torch.nn.Linear(in_dim, out_dim)
    align.load_state_dict(job.align)
    align.to(placement.model_device(model))
    batches = iter(job.plan)

    def draw(step):
        return akd.take(job.table, next(batches))

    masks = job.masks
    if job.probe is not None:
        akd.train_adapters(model, copy.deepcopy(align), draw, job.cfg, job.seed + 1, steps=job.probe.probe_steps)
        probe = adapter_state(model)
        load_adapter_state(model, job.cloud)
        masks = dwc.train_mask({k: probe[k] - job.cloud[k] + job.residual.get(k, 0) for k in probe}, job.probe)
    losses = akd.train_adapters(model, align, draw, job.cfg, job.seed, masks=masks)
    state = {k: v.detach().cpu().clone() for k, v in align.state_dict().items()}
    return TierResult(adapter_state(model), state, losses, time.time() - t0)


def plan_batches(draws: list[list[tuple[str, np.ndarray]]], sources: dict[str, dict]) -> tuple[dict, list]:
    """``(table, plan)`` from each batch's parts ``[(source name, row indices), ...]`` over ``sources``
    (name -> targets): the table holds each source's rows that some batch uses, once, and a batch's plan
    entry indexes them so that ``take(table, plan[i])`` is the batch's parts concatenated in order."""
    used = {name: np.unique(np.concatenate([idx for parts in draws for n, idx in parts if n == name] or
                                           [np.zeros(0, np.int64)])) for name in sources}
    names = [n for n in sources if len(used[n])]
    table = akd.concat([akd.take(sources[n], used[n]) for n in names])
    offset = dict(zip(names, np.cumsum([0] + [len(used[n]) for n in names[:-1]])))
    plan = [np.concatenate([offset[n] + np.searchsorted(used[n], idx) for n, idx in parts if len(idx)] or
                           [np.zeros(0, np.int64)]).astype(np.int64) for parts in draws]
    return table, plan
