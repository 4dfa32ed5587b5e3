"""FleetStrategy: the server half of an algorithm, over Flower's messages; the loop that drives it is
``fl_sim.server.loop``.

Per round the loop asks the strategy to plan (sample available devices with over-commitment,
``fl_sim.server.selection``; build each its task and downlink), sends the messages through Flower's grid, and
hands the replies back to ``close_round``: stragglers are cut on simulated times (``fl_sim.server.timing``;
devices that raise are failed) and ``update`` absorbs the kept replies. Evaluation, logging and checkpoints are
callbacks (``fl_sim.callbacks``).

A strategy is one file: the server half subclasses this, and names its device half, a behaviour in
``clients/`` (``device``). Subclasses decide:

``device``                    the device behaviour class (``clients.behaviour.DeviceBehaviour``)
``device_settings(p, r)``     the behaviour's ``Settings`` for device ``p`` in round ``r``
``downlink(tier)``            adapter state devices of ``tier`` run this round (``None`` = base model)
``update(r, kept, replied, plan)``  absorb the round's replies; returns an ``Absorbed`` (figures, cloud seconds)
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fl_sim.config import ExperimentConfig
from fl_sim.device import model_cache
from fl_sim.fleet.profiles import DeviceProfile
from fl_sim.protocol.device_task import EMULATE, DeviceTask, Downlink, task_record
from fl_sim.protocol.records import from_array_record, payload_bytes, to_array_record
from fl_sim.server.round import Absorbed, RoundOutcome, RoundPlan
from fl_sim.server.selection import sample_devices
from fl_sim.server.timing import straggler_cut
from fl_sim.world.catalog import catalog_of

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """Everything a strategy needs about the run (built by ``fl_sim.app.run``)."""
    cfg: ExperimentConfig
    fleet: list[DeviceProfile]
    model_paths: dict[str, str]  # tier -> checkpoint dir (and "teacher")
    run_dir: Path
    abort: threading.Event = field(default_factory=threading.Event)
    replay: dict | None = None  # round -> (sampled, kept device ids) to replay (``fleet.replay``)
    env_path: str = ""  # the devices' environment (``fl_sim.device.environment``), given to each node once
    callbacks: list = field(default_factory=list)  # ``fl_sim.callbacks.Callback``s, called in order


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


class FleetStrategy:
    name: ClassVar[str] = "base"
    device: ClassVar[type]  # the device behaviour (a ``clients.behaviour.DeviceBehaviour``)
    REQUIRED_METRICS: ClassVar[tuple[str, ...]] = ("n_infer", "n_train", "online_acc", "loss")

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.strategy_cfg = ctx.cfg.strategy
        self.tiers = sorted({p.tier for p in ctx.fleet})
        self.catalog = catalog_of(ctx.cfg)  # the run's domains backed by datasets on disk
        self.state: dict[str, dict[str, torch.Tensor]] = {}  # tensor groups, checkpointed every round
        self.nodes: list[int] = []  # Flower node ids; each emulates whichever device its message names
        self.clock_s = 0.0
        self.totals = {"uplink_bytes": 0, "downlink_bytes": 0}
        self._tier_records: dict = {}  # this round's adapter record per tier, shared by its devices

    # ----------------------------------------------------------------- hooks for subclasses
    def device_settings(self, p: DeviceProfile, server_round: int):
        """The ``Settings`` of ``self.device`` that device ``p`` runs with in ``server_round``."""
        raise NotImplementedError

    def downlink(self, tier: str) -> dict[str, torch.Tensor] | None:
        return self.state.get(tier)

    def device_downlink(self, p: DeviceProfile, server_round: int) -> Downlink:
        """What device ``p`` receives beside its task (default: its tier's adapter state, if any)."""
        if p.tier not in self._tier_records:
            sd = self.downlink(p.tier)
            self._tier_records[p.tier] = to_array_record(sd) if sd is not None else None
        rec = self._tier_records[p.tier]
        return Downlink({"adapter": rec} if rec is not None else {})

    def aggregate(self, tier: str, updates: list[tuple[dict[str, torch.Tensor], float]]) -> None:
        total = sum(w for _, w in updates)
        self.state[tier] = {k: sum(sd[k] * (w / total) for sd, w in updates) for k in updates[0][0]}

    def update(self, server_round: int, kept: list, replied: list, plan: RoundPlan) -> Absorbed:
        """Absorb the round: ``kept`` and ``replied`` (kept + stragglers) are ``[(device, reply, metrics)]``.

        Default: per-tier weighted mean of the kept devices' adapters."""
        by_tier: dict[str, list] = {}
        for dev, rep, m in kept:
            if "adapter" in rep.content:
                tier = self.ctx.fleet[dev].tier
                sd = from_array_record(rep.content["adapter"])
                ref = self.state.get(tier, {})
                if set(sd) != set(ref) or any(sd[k].shape != ref[k].shape or not torch.isfinite(sd[k]).all()
                                              for k in ref):
                    log.warning("round %d: rejected the adapter of device %d (wrong tensors or NaN)", server_round, dev)
                    continue
                by_tier.setdefault(tier, []).append((sd, float(m["n_train"]) or 1.0))
        for tier, updates in by_tier.items():
            self.aggregate(tier, updates)
        return Absorbed()

    def start_cloud(self) -> None:
        """Before the first round, once the nodes are up: start what the server runs beside the fleet (its
        Ray actors), so that a cloud the cluster cannot hold stops the run before any device works."""

    def stop_cloud(self) -> None:
        """When the loop ends, however it ends."""

    @classmethod
    def store_dir(cls, run_dir: Path) -> Path | None:
        """Where the devices read what the server stores for them (``fl_sim.protocol.version_store``), if anywhere."""
        return None

    @classmethod
    def effective_config(cls, cfg: ExperimentConfig) -> ExperimentConfig:
        """The config this strategy really runs (saved as the run's ``config.toml``)."""
        return cfg

    def device_weights(self, tier: str) -> dict[str, torch.Tensor] | None:
        """The adapter state a device of ``tier`` runs now (what evaluation measures)."""
        return self.downlink(tier)

    def init_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Server state at round 0: one adapter state per tier."""
        return {t: self.initial_state(t) for t in self.tiers}

    def initial_state(self, tier: str) -> dict[str, torch.Tensor]:
        _, init = model_cache.adapted_model(self.ctx.model_paths[tier], *self.strategy_cfg.adapters())
        return {k: v.clone() for k, v in init.items()}

    def checkpoint_state(self) -> dict:
        """The JSON part of a checkpoint (the tensors are ``self.state``), the callbacks' states included."""
        out = {"clock_s": self.clock_s, "totals": self.totals, "strategy": self.name}
        for cb in self.ctx.callbacks:
            out |= cb.state()
        return out

    def restore(self, state: dict, tensors: dict) -> int:
        """Continue from a checkpoint; returns its round."""
        self.clock_s, self.totals = state["clock_s"], state["totals"]
        for cb in self.ctx.callbacks:
            cb.load_state(state)
        self.state = dict(tensors)
        return int(state["round"])

    def resume_or_init(self) -> int:
        """Resume from the run directory's checkpoint, or initialise; returns the last completed round."""
        from fl_sim.callbacks.checkpoint_files import load_checkpoint

        ck = load_checkpoint(self.ctx.run_dir)
        if ck is None:
            self.state = self.init_state()
            return 0
        if ck[0].get("strategy") != self.name:
            raise RuntimeError(f"checkpoint in {self.ctx.run_dir} is of strategy {ck[0].get('strategy')!r}, "
                               f"not {self.name!r}")
        return self.restore(*ck)

    # ----------------------------------------------------------------- one round
    def summary(self) -> None:
        s = self.strategy_cfg
        log.info("%s: %d devices, %d per round (over-commit %.2f), deadline %.0f s", self.name,
                 len(self.ctx.fleet), s.clients_per_round, s.over_commit, s.deadline_s)

    def sample(self, server_round: int) -> tuple[list[DeviceProfile], int]:
        replayed = self.ctx.replay[server_round][0] if self.ctx.replay is not None else None
        s = self.strategy_cfg
        return sample_devices(self.ctx.fleet, self.clock_s, s.clients_per_round, s.over_commit, self.cfg.seed,
                              server_round, replayed)

    def device_task(self, p: DeviceProfile, server_round: int) -> DeviceTask:
        return self._task(p, server_round)[0]

    def _task(self, p: DeviceProfile, server_round: int) -> tuple[DeviceTask, object]:
        settings = self.device_settings(p, server_round)
        return DeviceTask(behaviour=self.device.name, round=server_round,
                          settings=settings.model_dump(mode="json")), settings

    def _message(self, p: DeviceProfile, server_round: int) -> tuple[DeviceTask, object, RecordDict]:
        task, settings = self._task(p, server_round)
        down = self.device_downlink(p, server_round)
        content = RecordDict({"task": task_record(task, down.task_values or None)})
        for key, rec in down.records.items():
            content[key] = rec
        return task, settings, content

    def message_content(self, p: DeviceProfile, server_round: int) -> tuple[DeviceTask, RecordDict]:
        """``(task, message content)`` for device ``p``: the task record and its downlink."""
        task, _, content = self._message(p, server_round)
        return task, content

    def plan_round(self, server_round: int) -> RoundPlan:
        """Sample the round's devices and build each its message."""
        chosen, n_available = self.sample(server_round)
        plan = RoundPlan([p.device_id for p in chosen], n_available)
        self._tier_records = {}
        for i, p in enumerate(chosen):
            task, settings, content = self._message(p, server_round)
            plan.settings[p.device_id] = settings
            plan.down_bytes[p.device_id] = payload_bytes(content)
            content[EMULATE] = ConfigRecord({"device_id": p.device_id})  # simulation plumbing: not downlink bytes
            plan.messages.append(Message(content=content, dst_node_id=self.nodes[i % len(self.nodes)],
                                         message_type=MessageType.TRAIN, group_id=str(server_round)))
        return plan

    def close_round(self, server_round: int, replies, plan: RoundPlan) -> RoundOutcome:
        """The round's outcome from ``replies``, ``[(device id, reply message)]``."""
        finished, failed, up_total = {}, 0, 0
        for dev, rep in replies:
            if rep.has_error():
                failed += 1
                log.info("device %d failed in round %d: %s", dev, server_round, rep.error.reason.splitlines()[-1:])
                continue
            up = payload_bytes(rep.content)
            up_total += up
            p = self.ctx.fleet[dev]
            try:
                m = self.check_metrics(rep)
            except (KeyError, TypeError, ValueError) as exc:  # a malformed reply is a failed device
                failed += 1
                log.warning("device %d sent a malformed reply in round %d: %s", dev, server_round, exc)
                continue
            t = p.compute_s(int(m["n_infer"]), int(m["n_train"])) + p.comm_s(plan.down_bytes[dev], up)
            finished[dev] = (t, rep, m)
        replay_kept = self.ctx.replay[server_round][1] if self.ctx.replay is not None else None
        s = self.strategy_cfg
        cut = straggler_cut({d: f[0] for d, f in finished.items()}, s.clients_per_round, s.deadline_s,
                            len(plan.sampled), replay_kept)
        kept = [(d, finished[d][1], finished[d][2]) for d in cut.kept]
        replied = [(d, finished[d][1], finished[d][2]) for d in sorted(finished, key=lambda d: (finished[d][0], d))]
        absorbed = self.update(server_round, kept, replied, plan)
        down_total = sum(plan.down_bytes.values())
        # cloud work (if any) follows the uploads; work that lagged behind the last round ran beside this one's
        self.clock_s += max(cut.round_s, absorbed.behind_s) + (absorbed.cloud_s or 0.0)
        self.totals["uplink_bytes"] += up_total
        self.totals["downlink_bytes"] += down_total
        return RoundOutcome(
            participant_ids=sorted(cut.kept), stragglers=len(finished) - len(kept),
            late=len(finished) - cut.on_time, failed=failed + len(plan.sampled) - len(replies),
            uplink_bytes=up_total, downlink_bytes=down_total, round_virtual_s=cut.round_s,
            online_acc=_nanmean([float(m["online_acc"]) for *_, m in kept]),
            loss=_nanmean([float(m["loss"]) for *_, m in kept]), absorbed=absorbed)

    def check_metrics(self, rep) -> dict:
        """The reply's metrics as floats; ``KeyError``/``ValueError`` when a required one is missing or bad."""
        m = {k: float(v) for k, v in rep.content["metrics"].items()}
        for k in self.REQUIRED_METRICS:
            if k not in m:
                raise KeyError(f"metrics lack {k!r}")
        if not all(math.isfinite(m[k]) and m[k] >= 0 for k in ("n_infer", "n_train")):
            raise ValueError(f"bad sample counts {m['n_infer']}, {m['n_train']}")
        return m

    # ----------------------------------------------------------------- before the first round
    def _first(self) -> dict[tuple[str, str], tuple[int, int]]:
        """``(tier, domain) -> (device id, round)`` of the first device of each tier to see each domain."""
        first: dict[tuple[str, str], tuple[int, int]] = {}
        for p in self.ctx.fleet:
            for r in range(1, self.cfg.rounds + 1):
                for domain, _ in p.mix_at(r):
                    first.setdefault((p.tier, domain), (p.device_id, r))
        return first

    def first_visits(self) -> list[tuple[int, int]]:
        """``(device id, round)`` of the first device of each tier to see each domain in this run."""
        return list(self._first().values())

    def prepare_data(self) -> None:
        """Build (or find cached) every domain's device partition once here, not in each Ray worker."""
        f = self.cfg.fleet
        for domain in sorted({d for _, d in self._first()}):
            model_cache.device_pools(domain, f.train_size, self.cfg.seed, self.cfg.cache_dir, len(self.ctx.fleet),
                                     f.partition, f.partition_by, f.dirichlet_alpha, self.catalog)

    def provision(self) -> dict:
        """What every node is given once: the devices' environment, and what its worker should warm up."""
        import json

        out = {"env": self.ctx.env_path}
        if self.cfg.simulation.warm_up:
            out["warm"] = json.dumps([[self.device.name, d, r] for d, r in self.first_visits()])
        return out
