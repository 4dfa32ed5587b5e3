"""FleetStrategy: the server loop researchers need, on Flower's ``Strategy``.

Per round: sample available devices with over-commitment (``fl_sim.server.selection``), send each its task,
collect replies, cut stragglers on simulated times (``fl_sim.server.timing``; devices that raise are failed),
aggregate, evaluate on the server (``fl_sim.server.evaluation``), then hand the round's record to the
callbacks (results, TensorBoard, checkpoint, console: ``fl_sim.callbacks``).

A strategy is one file: the server half subclasses this, and names its device half, a behaviour in
``clients/`` (``device``). Subclasses decide:

``device``                    the device behaviour class (``clients.behaviour.DeviceBehaviour``)
``device_settings(p, r)``     the behaviour's ``Settings`` for device ``p`` in round ``r``
``downlink(tier)``            adapter state devices of ``tier`` run this round (``None`` = base model)
``update(r, kept, replied, plan)``  absorb the round's replies; returns extra metrics to log

``configure_train`` and ``aggregate_train`` keep Flower's names; the loop is ours, so they exchange a
``RoundPlan`` and return a ``RoundOutcome`` instead of Flower's records. Evaluation is centralised,
so the federated-evaluation hooks send nothing.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from fl_sim.callbacks.continual import ContinualTracker
from fl_sim.config import ExperimentConfig
from fl_sim.device import model_cache
from fl_sim.fleet.profiles import DeviceProfile
from fl_sim.protocol.records import from_array_record, payload_bytes, to_array_record
from fl_sim.protocol.task import EMULATE, DeviceTask, task_record
from fl_sim.server.evaluation import FleetEvaluator, eval_domains
from fl_sim.server.nodes import num_nodes, provision_nodes, send_and_receive
from fl_sim.server.selection import sample_devices
from fl_sim.server.timing import straggler_cut

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


@dataclass
class RoundPlan:
    """What ``configure_train`` decided: who was sampled, and what each was sent."""
    sampled: list[int]
    available: int
    messages: list = field(default_factory=list)
    tasks: dict[int, DeviceTask] = field(default_factory=dict)
    down_bytes: dict[int, int] = field(default_factory=dict)


@dataclass
class RoundOutcome:
    """What a round produced, as logged (``record()``)."""
    participant_ids: list[int]
    stragglers: int
    late: int
    failed: int
    uplink_bytes: int
    downlink_bytes: int
    round_virtual_s: float
    online_acc: float
    loss: float
    extra: dict

    def record(self) -> dict:
        return {"participant_ids": self.participant_ids, "participants": len(self.participant_ids),
                "stragglers": self.stragglers, "late": self.late, "failed": self.failed,
                "uplink_bytes": self.uplink_bytes, "downlink_bytes": self.downlink_bytes,
                "round_virtual_s": self.round_virtual_s, "online_acc": self.online_acc, "loss": self.loss}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


class FleetStrategy(Strategy):
    name: ClassVar[str] = "base"
    device: ClassVar[type]  # the device behaviour (a ``clients.behaviour.DeviceBehaviour``)
    REQUIRED_METRICS: ClassVar[tuple[str, ...]] = ("n_infer", "n_train", "online_acc", "loss")

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.s = ctx.cfg.strategy
        self.tiers = sorted({p.tier for p in ctx.fleet})
        self.state: dict[str, dict[str, torch.Tensor]] = {}  # tensor groups, checkpointed every round
        self.nodes: list[int] = []  # Flower node ids; each emulates whichever device its message names
        self.clock_s = 0.0
        self.totals = {"uplink_bytes": 0, "downlink_bytes": 0}
        self.evaluator = FleetEvaluator(self.cfg, ctx.model_paths, [p.tier for p in ctx.fleet],
                                        eval_domains(ctx.fleet))
        self.continual = ContinualTracker(ctx.fleet)
        self._tier_records: dict = {}  # this round's adapter record per tier, shared by its devices

    # ----------------------------------------------------------------- hooks for subclasses
    def device_settings(self, p: DeviceProfile, server_round: int):
        """The ``Settings`` of ``self.device`` that device ``p`` runs with in ``server_round``."""
        raise NotImplementedError

    def downlink(self, tier: str) -> dict[str, torch.Tensor] | None:
        return self.state.get(tier)

    def downlink_records(self, p: DeviceProfile, server_round: int) -> dict:
        """Records sent to device ``p`` beside its task (default: its tier's adapter state, if any).

        Key ``"task"`` is not a record but extra entries for the task record (Flower frames each record of
        a message with about 150 bytes; a value in an existing record costs about 20).
        """
        if p.tier not in self._tier_records:
            sd = self.downlink(p.tier)
            self._tier_records[p.tier] = to_array_record(sd) if sd is not None else None
        rec = self._tier_records[p.tier]
        return {"adapter": rec} if rec is not None else {}

    def aggregate(self, tier: str, updates: list[tuple[dict[str, torch.Tensor], float]]) -> None:
        total = sum(w for _, w in updates)
        self.state[tier] = {k: sum(sd[k] * (w / total) for sd, w in updates) for k in updates[0][0]}

    def update(self, server_round: int, kept: list, replied: list, plan: RoundPlan) -> dict:
        """Absorb the round: ``kept`` and ``replied`` (kept + stragglers) are ``[(device, reply, metrics)]``.

        Default: per-tier weighted mean of the kept devices' adapters. Returns extra metrics to log.
        """
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
        return {}

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
        _, init = model_cache.adapted_model(self.ctx.model_paths[tier], *self.s.adapters())
        return {k: v.clone() for k, v in init.items()}

    def checkpoint_state(self) -> dict:
        """The JSON part of a checkpoint (the tensors are ``self.state``)."""
        return {"clock_s": self.clock_s, "totals": self.totals, "strategy": self.name,
                "continual": self.continual.state()} | self.evaluator.state()

    def restore(self, state: dict, tensors: dict) -> int:
        """Continue from a checkpoint; returns its round."""
        self.clock_s, self.totals = state["clock_s"], state["totals"]
        self.evaluator.load_state(state)
        self.continual.load_state(state.get("continual"))
        self.state = dict(tensors)
        return int(state["round"])

    # ----------------------------------------------------------------- Flower Strategy interface
    def summary(self) -> None:
        log.info("%s: %d devices, %d per round (over-commit %.2f), deadline %.0f s", self.name,
                 len(self.ctx.fleet), self.s.clients_per_round, self.s.over_commit, self.s.deadline_s)

    def sample(self, server_round: int) -> tuple[list[DeviceProfile], int]:
        replayed = self.ctx.replay[server_round][0] if self.ctx.replay is not None else None
        return sample_devices(self.ctx.fleet, self.clock_s, self.s.clients_per_round, self.s.over_commit,
                              self.cfg.seed, server_round, replayed)

    def device_task(self, p: DeviceProfile, server_round: int) -> DeviceTask:
        return DeviceTask(behaviour=self.device.name, round=server_round,
                          settings=self.device_settings(p, server_round).model_dump(mode="json"))

    def message_content(self, p: DeviceProfile, server_round: int) -> tuple[DeviceTask, RecordDict]:
        """``(task, message content)`` for device ``p``: the task record and what ``downlink_records`` adds."""
        task = self.device_task(p, server_round)
        extra = self.downlink_records(p, server_round)
        content = RecordDict({"task": task_record(task, extra.get("task"))})
        for key, rec in extra.items():
            if key != "task":
                content[key] = rec
        return task, content

    def configure_train(self, server_round: int, arrays=None, config=None, grid=None) -> RoundPlan:
        chosen, n_available = self.sample(server_round)
        plan = RoundPlan([p.device_id for p in chosen], n_available)
        self._tier_records = {}
        for i, p in enumerate(chosen):
            task, content = self.message_content(p, server_round)
            plan.tasks[p.device_id] = task
            plan.down_bytes[p.device_id] = payload_bytes(content)
            content[EMULATE] = ConfigRecord({"device_id": p.device_id})  # simulation plumbing: not downlink bytes
            plan.messages.append(Message(content=content, dst_node_id=self.nodes[i % len(self.nodes)],
                                         message_type=MessageType.TRAIN, group_id=str(server_round)))
        return plan

    def aggregate_train(self, server_round: int, replies, plan: RoundPlan = None) -> RoundOutcome:
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
        cut = straggler_cut({d: f[0] for d, f in finished.items()}, self.s.clients_per_round, self.s.deadline_s,
                            len(plan.sampled), replay_kept)
        kept = [(d, finished[d][1], finished[d][2]) for d in cut.kept]
        replied = [(d, finished[d][1], finished[d][2]) for d in sorted(finished, key=lambda d: (finished[d][0], d))]
        extra = self.update(server_round, kept, replied, plan)
        down_total = sum(plan.down_bytes.values())
        self.clock_s += cut.round_s + extra.get("cloud_s", 0.0)  # cloud work (if any) follows the uploads
        self.totals["uplink_bytes"] += up_total
        self.totals["downlink_bytes"] += down_total
        return RoundOutcome(
            participant_ids=sorted(cut.kept), stragglers=len(finished) - len(kept),
            late=len(finished) - cut.on_time, failed=failed + len(plan.sampled) - len(replies),
            uplink_bytes=up_total, downlink_bytes=down_total, round_virtual_s=cut.round_s,
            online_acc=_nanmean([float(m["online_acc"]) for *_, m in kept]),
            loss=_nanmean([float(m["loss"]) for *_, m in kept]), extra=extra)

    def configure_evaluate(self, server_round, arrays, config, grid) -> list[Message]:
        return []  # evaluation is centralised: see ``evaluate_tiers``

    def aggregate_evaluate(self, server_round, replies) -> MetricRecord | None:
        return None

    def check_metrics(self, rep) -> dict:
        """The reply's metrics as floats; ``KeyError``/``ValueError`` when a required one is missing or bad."""
        m = {k: float(v) for k, v in rep.content["metrics"].items()}
        for k in self.REQUIRED_METRICS:
            if k not in m:
                raise KeyError(f"metrics lack {k!r}")
        if not all(math.isfinite(m[k]) and m[k] >= 0 for k in ("n_infer", "n_train")):
            raise ValueError(f"bad sample counts {m['n_infer']}, {m['n_train']}")
        return m

    def evaluate_tiers(self) -> dict:
        """Accuracy of each tier's current model per domain (``fl_sim.server.evaluation.FleetEvaluator``)."""
        return self.evaluator({tier: self.device_weights(tier) for tier in self.tiers})

    # ----------------------------------------------------------------- the loop
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
                                 f.partition, f.partition_by, f.dirichlet_alpha)

    def provision(self) -> dict:
        """What every node is given once: the devices' environment, and what its worker should warm up."""
        import json

        out = {"env": self.ctx.env_path}
        if self.cfg.simulation.warm_up:
            out["warm"] = json.dumps([[self.device.name, d, r] for d, r in self.first_visits()])
        return out

    def start(self) -> int:
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

    def run(self, grid, n_nodes: int | None = None) -> None:
        """The experiment: (resume,) provision the nodes, then ``rounds`` rounds of
        train/aggregate/evaluate/callbacks. ``n_nodes``: how many nodes to wait for (default
        ``num_nodes(cfg)``, what ``fl-sim run`` starts; 0 = whichever registered, as under ``flwr run``)."""
        cfg, callbacks = self.cfg, self.ctx.callbacks
        start = self.start()
        self.summary()
        t_data = time.time()
        self.prepare_data()
        t_map = time.time()
        data_s = t_map - t_data
        self.nodes = provision_nodes(grid, num_nodes(cfg, len(self.ctx.fleet)) if n_nodes is None else n_nodes or None,
                                     self.provision(), cfg.simulation.round_timeout_s, self.ctx.abort)
        map_s = time.time() - t_map
        log.info("provisioned %d nodes for %d devices%s in %.1f s", len(self.nodes), len(self.ctx.fleet),
                 " and warmed the workers up" if cfg.simulation.warm_up else "", map_s)
        for cb in callbacks:
            cb.on_run_begin(self, start + 1)
        completed = False
        spent: dict[str, float] = {}  # seconds of each callback (results, checkpoint) after the previous round
        try:
            for r in range(start + 1, cfg.rounds + 1):
                if self.ctx.abort.is_set():
                    raise RuntimeError("simulation backend stopped")
                t0 = time.time()
                plan = self.configure_train(r)
                replies = [(plan.sampled[i], rep) for i, rep in
                           send_and_receive(grid, plan.messages, cfg.simulation.round_timeout_s, self.ctx.abort)]
                if self.ctx.abort.is_set():  # stopped while devices worked: this round is not kept
                    raise RuntimeError("simulation backend stopped")
                t1 = time.time()
                outcome = self.aggregate_train(r, replies, plan)
                t2 = time.time()
                if self.ctx.abort.is_set():
                    raise RuntimeError("simulation backend stopped")
                ev = self.evaluate_tiers() if (r % cfg.eval.every == 0 or r == cfg.rounds) else {}
                if ev:
                    ev |= self.continual.update(r, ev["acc_tier"])
                t3 = time.time()
                record = {"round": r, "virtual_time_s": self.clock_s, "available": plan.available,
                          "sampled": len(plan.sampled), "sampled_ids": plan.sampled, **outcome.record(),
                          "cum_uplink_bytes": self.totals["uplink_bytes"],
                          "cum_downlink_bytes": self.totals["downlink_bytes"],
                          "wall_s": {"train": t1 - t0, "aggregate": t2 - t1, "evaluate": t3 - t2},
                          **outcome.extra, **ev}
                record["wall_s"]["round"] = time.time() - t0
                if r == start + 1:  # node mapping (and worker warm-up) of this simulation, before its first round
                    record["wall_s"]["map_nodes"] = map_s
                    record["wall_s"]["prepare_data"] = data_s
                else:  # the previous round's logging and checkpoint, which ran after its record was made
                    record["wall_s"]["previous_round_callbacks"] = spent
                spent = {}
                for cb in callbacks:
                    t = time.time()
                    cb.after_round(self, record)
                    spent[type(cb).__name__] = time.time() - t
            completed = True
        finally:
            for cb in callbacks:
                cb.on_run_end(self, completed)
