"""FleetStrategy: the server loop researchers need, on Flower's ``Strategy``.

Per round: sample available devices with over-commitment, send each its instructions, collect replies,
advance a virtual clock with the FedScale cost model, keep the fastest ``clients_per_round`` that meet
the deadline (the rest are stragglers; devices that raise are failed), aggregate, evaluate on the
server, log, checkpoint. Subclasses decide what devices receive and how updates are combined:

``downlink(tier)``            adapter state devices of ``tier`` run this round (``None`` = base model)
``device_settings()``         strategy-specific entries of the device config (local steps, mu, ...)
``aggregate(tier, updates)``  new tier state from ``[(adapter_state, weight), ...]`` of kept devices

Evaluation is centralised (per tier x domain test sets, plus the teacher for reference), so the
federated-evaluation hooks of ``Strategy`` send nothing.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from fl_sim import runtime
from fl_sim.checkpoint import load_checkpoint, save_checkpoint
from fl_sim.config import ExperimentConfig
from fl_sim.fleet import DeviceProfile
from fl_sim.metrics import MetricsLogger
from fl_sim.models.adapters import load_adapter_state
from fl_sim.models.evaluate import evaluate
from fl_sim.wire import from_array_record, payload_bytes, to_array_record
from fl_sim.world.domains import DOMAINS

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """Everything a strategy needs about the run (built by ``fl_sim.run``)."""
    cfg: ExperimentConfig
    fleet: list[DeviceProfile]
    model_paths: dict[str, str]  # tier -> checkpoint dir (and "teacher")
    run_dir: Path
    abort: threading.Event = field(default_factory=threading.Event)
    on_round: object = None  # callable(record) for console progress
    replay: dict | None = None  # round -> (sampled, kept device ids) to replay (``fleet.replay``)


def send_and_receive(grid, messages: list, timeout: float, abort: threading.Event) -> list:
    """``grid.send_and_receive`` that also stops waiting when ``abort`` is set (backend crashed)."""
    if not messages:
        return []
    pending = set(grid.push_messages(messages))
    out, end = [], time.time() + timeout
    while pending and time.time() < end and not abort.is_set():
        got = list(grid.pull_messages(pending))
        out += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if pending:
            time.sleep(0.02)
    return out


def eval_sets(cfg: ExperimentConfig) -> dict:
    """The run's server-side test sets: ``eval.n_test`` samples of every domain, drawn with the run seed."""
    return {d: runtime.split(d, "test", cfg.eval.n_test, cfg.seed, cfg.cache_dir) for d in DOMAINS}


def evaluate_adapters(cfg: ExperimentConfig, model_paths: dict, states: dict, fleet_tiers: list[str]) -> dict:
    """``{"acc": domain -> tier-share-weighted accuracy (and "overall"), "acc_tier": tier -> domain -> acc}``
    of each tier's model with adapter state ``states[tier]`` (``None`` = the initial adapters), the tier
    shares counted over ``fleet_tiers`` (one entry per device)."""
    pr = runtime.prompter(cfg.cache_dir)
    sets = eval_sets(cfg)
    per_tier = {}
    for tier, state in states.items():
        model, init = runtime.adapted_model(model_paths[tier], *cfg.strategy.adapters())
        load_adapter_state(model, state if state is not None else init)
        per_tier[tier] = {d: r.get("vqa", float("nan")) for d, r in evaluate(model, pr, sets).items()}
    share = {t: fleet_tiers.count(t) / len(fleet_tiers) for t in states}
    by_domain = {d: sum(share[t] * per_tier[t][d] for t in states) for d in sets}
    return {"acc": by_domain | {"overall": float(np.mean(list(by_domain.values())))}, "acc_tier": per_tier}


class FleetStrategy(Strategy):
    name = "base"
    # the ``strategy.*`` sections of uts/akd/dwc it reads; changing the others does not change its runs
    config_sections: tuple[str, ...] = ()

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.s = ctx.cfg.strategy
        self.tiers = sorted({p.tier for p in ctx.fleet})
        self.state: dict[str, dict[str, torch.Tensor]] = {}  # per-tier adapter state
        self.node_of: dict[int, int] = {}
        self.clock_s = 0.0
        self.totals = {"uplink_bytes": 0, "downlink_bytes": 0}
        self.teacher_acc: dict | None = None
        self._round_info: dict = {}
        self._tier_records: dict = {}

    # ----------------------------------------------------------------- hooks for subclasses
    def downlink(self, tier: str) -> dict[str, torch.Tensor] | None:
        return self.state.get(tier)

    def device_settings(self) -> dict:
        return {"local_steps": self.s.local_steps, "proximal_mu": 0.0}

    def aggregate(self, tier: str, updates: list[tuple[dict[str, torch.Tensor], float]]) -> None:
        total = sum(w for _, w in updates)
        self.state[tier] = {k: sum(sd[k] * (w / total) for sd, w in updates) for k in updates[0][0]}

    def update(self, server_round: int, kept: list, replied: list) -> dict:
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
    def effective_config(cls, cfg: ExperimentConfig) -> ExperimentConfig:
        """The config this strategy really runs (saved as the run's ``config.toml``)."""
        return cfg

    def device_weights(self, tier: str) -> dict[str, torch.Tensor] | None:
        """The adapter state a device of ``tier`` runs now (what evaluation measures)."""
        return self.downlink(tier)

    def init_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Server state at round 0 (tensor groups, checkpointed every round): one adapter state per tier."""
        return {t: self.initial_state(t) for t in self.tiers}

    def initial_state(self, tier: str) -> dict[str, torch.Tensor]:
        _, init = runtime.adapted_model(self.ctx.model_paths[tier], *self.s.adapters())
        return {k: v.clone() for k, v in init.items()}

    # ----------------------------------------------------------------- Flower Strategy interface
    def summary(self) -> None:
        log.info("%s: %d devices, %d per round (over-commit %.2f), deadline %.0f s", self.name,
                 len(self.ctx.fleet), self.s.clients_per_round, self.s.over_commit, self.s.deadline_s)

    def sample(self, server_round: int) -> tuple[list[DeviceProfile], int]:
        """Available devices at the current virtual time, ``ceil(K * over_commit)`` drawn from the round's stream
        (with ``fleet.replay``: the devices the replayed run sampled, available or not)."""
        available = [p for p in self.ctx.fleet if p.available(self.clock_s)]
        if self.ctx.replay is not None:
            return [self.ctx.fleet[i] for i in self.ctx.replay[server_round][0]], len(available)
        n = min(len(available), math.ceil(self.s.clients_per_round * self.s.over_commit))
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, 7, server_round]))
        chosen = sorted(rng.choice(len(available), size=n, replace=False).tolist()) if n else []
        return [available[i] for i in chosen], len(available)

    def device_config(self, p: DeviceProfile, server_round: int) -> dict:
        f, sim = self.cfg.fleet, self.cfg.simulation
        return {"device_id": p.device_id, "round": server_round, "seed": self.cfg.seed, "tier": p.tier,
                "domain": p.domain_at(server_round), "model_path": self.ctx.model_paths[p.tier],
                "lora_r": self.s.lora_r, "lora_tokens": self.s.lora_tokens, "projector": self.s.adapters()[2], "batch_size": self.s.batch_size, "lr": self.s.lr, "labels": self.s.labels,
                "samples_per_round": f.samples_per_round, "train_size": f.train_size,
                "num_devices": len(self.ctx.fleet), "partition": f.partition, "partition_by": f.partition_by,
                "alpha": f.dirichlet_alpha, "crash_prob": f.crash_prob, "cache_dir": self.cfg.cache_dir or "",
                "threads": sim.threads_per_client} | self.device_settings()

    def downlink_records(self, p: DeviceProfile, server_round: int) -> dict:
        """Records sent to device ``p`` besides its config (default: its tier's adapter state, if any).

        Key ``"config"`` is not a record but extra entries for the device's config record (Flower
        frames each record of a message with about 150 bytes; a value in an existing record costs ~20).
        """
        if p.tier not in self._tier_records:
            sd = self.downlink(p.tier)
            self._tier_records[p.tier] = to_array_record(sd) if sd is not None else None
        rec = self._tier_records[p.tier]
        return {"adapter": rec} if rec is not None else {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid) -> list[Message]:
        chosen, n_available = self.sample(server_round)
        self._tier_records = {}  # one record per tier, shared by its devices
        messages, down = [], {}
        for p in chosen:
            extra = self.downlink_records(p, server_round)
            content = RecordDict({"config": ConfigRecord(self.device_config(p, server_round) | extra.get("config", {}))})
            for key, rec in extra.items():
                if key != "config":
                    content[key] = rec
            down[p.device_id] = payload_bytes(content)
            messages.append(Message(content=content, dst_node_id=self.node_of[p.device_id],
                                    message_type=MessageType.TRAIN, group_id=str(server_round)))
        self._round_info = {"sampled": [p.device_id for p in chosen], "available": n_available, "down": down}
        return messages

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        info = self._round_info
        device_of = {n: d for d, n in self.node_of.items()}
        finished, failed, up_total = [], 0, 0
        for rep in replies:
            dev = device_of.get(rep.metadata.src_node_id)
            if dev is None:
                continue
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
            t = p.compute_s(int(m["n_infer"]), int(m["n_train"])) + p.comm_s(info["down"][dev], up)
            finished.append((t, dev, rep, m))
        missing = len(info["sampled"]) - len(replies)
        finished.sort(key=lambda x: (x[0], x[1]))
        on_time = [f for f in finished if f[0] <= self.s.deadline_s]
        kept = on_time[:self.s.clients_per_round]
        if self.ctx.replay is not None:  # the replayed run's participants that replied, whatever their times
            want = set(self.ctx.replay[server_round][1])
            kept = [f for f in finished if f[1] in want]
        # the round ends when the K fastest are in; if fewer make it, the server waits out the deadline
        target = min(self.s.clients_per_round, len(info["sampled"]))
        round_s = max(f[0] for f in kept) if kept and len(kept) >= target else self.s.deadline_s
        extra = self.update(server_round, [(dev, rep, m) for _, dev, rep, m in kept],
                            [(dev, rep, m) for _, dev, rep, m in finished])
        down_total = sum(info["down"].values())
        self.clock_s += round_s + extra.get("cloud_s", 0.0)  # cloud work (if any) follows the uploads
        self.totals["uplink_bytes"] += up_total
        self.totals["downlink_bytes"] += down_total
        losses = [float(m["loss"]) for *_, m in kept if not math.isnan(float(m["loss"]))]
        self._round_info |= {
            "participant_ids": sorted(dev for _, dev, _, _ in kept),
            "participants": len(kept), "stragglers": len(finished) - len(kept), "failed": failed + missing,
            "late": len(finished) - len(on_time),
            "uplink_bytes": up_total, "downlink_bytes": down_total, "round_virtual_s": round_s,
            "online_acc": (float(np.nanmean([float(m["online_acc"]) for *_, m in kept]))
                           if kept and any(not math.isnan(float(m["online_acc"])) for *_, m in kept) else float("nan")),
            "loss": float(np.mean(losses)) if losses else float("nan"), "extra": extra,
        }
        return None, MetricRecord({"participants": len(kept)})

    def configure_evaluate(self, server_round, arrays, config, grid) -> list[Message]:
        return []  # evaluation is centralised: see ``evaluate_tiers``

    def aggregate_evaluate(self, server_round, replies) -> MetricRecord | None:
        return None

    REQUIRED_METRICS = ("n_infer", "n_train", "online_acc", "loss")

    def check_metrics(self, rep) -> dict:
        """The reply's metrics as floats; ``KeyError``/``ValueError`` when a required one is missing or bad."""
        m = {k: float(v) for k, v in rep.content["metrics"].items()}
        for k in self.REQUIRED_METRICS:
            if k not in m:
                raise KeyError(f"metrics lack {k!r}")
        if not all(math.isfinite(m[k]) and m[k] >= 0 for k in ("n_infer", "n_train")):
            raise ValueError(f"bad sample counts {m['n_infer']}, {m['n_train']}")
        return m

    # ----------------------------------------------------------------- evaluation
    def evaluate_tiers(self) -> dict:
        """Accuracy of each tier's current model per domain, tier-share-weighted domain means, overall."""
        cfg = self.cfg
        if self.teacher_acc is None:
            pr = runtime.prompter(cfg.cache_dir)
            t = evaluate(runtime.base_model(self.ctx.model_paths["teacher"]), pr, eval_sets(cfg))
            self.teacher_acc = {d: r.get("vqa", float("nan")) for d, r in t.items()}
        states = {tier: self.device_weights(tier) for tier in self.tiers}
        return evaluate_adapters(cfg, self.ctx.model_paths, states, [p.tier for p in self.ctx.fleet]) | {
            "teacher_acc": dict(self.teacher_acc)}

    # ----------------------------------------------------------------- the loop
    def _first_visits(self) -> dict[tuple[str, str], tuple[DeviceProfile, int]]:
        """``(tier, domain) -> (a device, the round)`` of the first device of each tier to see each domain."""
        first: dict[tuple[str, str], tuple[DeviceProfile, int]] = {}
        for p in self.ctx.fleet:
            for r in range(1, self.cfg.rounds + 1):
                first.setdefault((p.tier, p.domain_at(r)), (p, r))
        return first

    def warm_configs(self) -> list[dict]:
        """Device configs covering every tier and every domain a device sees in this run (for warm-up)."""
        return [FleetStrategy.device_config(self, p, r) for p, r in self._first_visits().values()]

    def prepare_data(self) -> None:
        """Build (or find cached) every domain's device partition once here, not in each Ray worker."""
        f = self.cfg.fleet
        for domain in sorted({d for _, d in self._first_visits()}):
            runtime.device_pools(domain, f.train_size, self.cfg.seed, self.cfg.cache_dir or None, len(self.ctx.fleet),
                                 f.partition, f.partition_by, f.dirichlet_alpha)

    def map_nodes(self, grid) -> None:
        """Wait for every node, then ask each which device it emulates (and warm the workers up:
        ``simulation.warm_up``)."""
        deadline = time.time() + self.cfg.simulation.round_timeout_s
        while len(ids := list(grid.get_node_ids())) < len(self.ctx.fleet):
            if time.time() > deadline or self.ctx.abort.is_set():
                raise RuntimeError(f"only {len(ids)} of {len(self.ctx.fleet)} nodes registered")
            time.sleep(0.05)
        warm = json.dumps(self.warm_configs()) if self.cfg.simulation.warm_up else None

        def content() -> RecordDict:
            rd = RecordDict({"q": ConfigRecord({})})
            if warm is not None:
                rd["warm"] = ConfigRecord({"configs": warm})
            return rd

        msgs = [Message(content(), dst_node_id=n, message_type=MessageType.QUERY) for n in ids]
        errors = []
        for rep in send_and_receive(grid, msgs, self.cfg.simulation.round_timeout_s, self.ctx.abort):
            if rep.has_error():
                errors.append(rep.error.reason.strip().splitlines()[-1] if rep.error.reason else str(rep.error.code))
            else:
                self.node_of[int(rep.content["device"]["device_id"])] = rep.metadata.src_node_id
        if len(self.node_of) != len(self.ctx.fleet):
            raise RuntimeError(f"only {len(self.node_of)} of {len(self.ctx.fleet)} devices answered the query"
                               + (f" (first error: {errors[0]})" if errors else ""))

    def _checkpoint_state(self, server_round: int) -> dict:
        return {"clock_s": self.clock_s, "totals": self.totals, "teacher_acc": self.teacher_acc,
                "strategy": self.name}

    def restore(self, state: dict, tensors: dict) -> int:
        self.clock_s, self.totals, self.teacher_acc = state["clock_s"], state["totals"], state["teacher_acc"]
        self.state = {g: t for g, t in tensors.items()}
        return int(state["round"])

    def run(self, grid) -> None:
        """The experiment: (resume,) map nodes, then ``rounds`` rounds of train/aggregate/evaluate/log."""
        cfg, run_dir = self.cfg, self.ctx.run_dir
        start = 0
        ck = load_checkpoint(run_dir)
        if ck is not None:
            if ck[0].get("strategy") != self.name:
                raise RuntimeError(f"checkpoint in {run_dir} is of strategy {ck[0].get('strategy')!r}, not {self.name!r}")
            start = self.restore(*ck)
        else:
            self.state = self.init_state()
        logger = MetricsLogger(run_dir, first_round=start + 1)
        logger.truncate_after(start)
        self.summary()
        t_map = time.time()
        self.prepare_data()
        self.map_nodes(grid)
        map_s = time.time() - t_map
        log.info("mapped %d nodes%s in %.1f s", len(self.node_of),
                 " and warmed the workers up" if cfg.simulation.warm_up else "", map_s)
        try:
            for r in range(start + 1, cfg.rounds + 1):
                if self.ctx.abort.is_set():
                    raise RuntimeError("simulation backend stopped")
                t0 = time.time()
                msgs = self.configure_train(r, ArrayRecord(), ConfigRecord(), grid)
                replies = send_and_receive(grid, msgs, cfg.simulation.round_timeout_s, self.ctx.abort)
                t1 = time.time()
                self.aggregate_train(r, replies)
                t2 = time.time()
                ev = self.evaluate_tiers() if (r % cfg.eval.every == 0 or r == cfg.rounds) else {}
                t3 = time.time()
                info = self._round_info
                record = {"round": r, "virtual_time_s": self.clock_s, "available": info["available"],
                          "sampled": len(info["sampled"]), "sampled_ids": info["sampled"],
                          "participant_ids": info["participant_ids"],
                          **{k: info[k] for k in ("participants", "stragglers", "late", "failed", "uplink_bytes",
                                                  "downlink_bytes", "round_virtual_s", "online_acc", "loss")},
                          "cum_uplink_bytes": self.totals["uplink_bytes"],
                          "cum_downlink_bytes": self.totals["downlink_bytes"],
                          "wall_s": {"train": t1 - t0, "aggregate": t2 - t1, "evaluate": t3 - t2},
                          **info["extra"], **ev}
                record["wall_s"]["round"] = time.time() - t0
                if r == start + 1:  # node mapping (and worker warm-up) of this simulation, before its first round
                    record["wall_s"]["map_nodes"] = map_s
                logger.log(record)  # before the checkpoint: a resume re-runs (and truncates) an unsaved round
                save_checkpoint(run_dir, r, self._checkpoint_state(r), self.state)
                if self.ctx.on_round:
                    self.ctx.on_round(record)
        finally:
            logger.close()
