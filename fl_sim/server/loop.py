"""The server loop: (resume,) provision the nodes, then each round plan, send, close, and hand the record to
the callbacks, which evaluate, log, checkpoint and may stop the run (``fl_sim.callbacks``)."""

from __future__ import annotations

import logging
import time

from fl_sim.callbacks import Report
from fl_sim.server.nodes import num_nodes, provision_nodes, send_and_receive
from fl_sim.server.round import RoundRecord

log = logging.getLogger(__name__)


class BackendStopped(RuntimeError):
    """The simulation backend stopped while the loop ran."""


def run(strategy, grid, n_nodes: int | None = None) -> None:
    """Run ``strategy``'s experiment on Flower's ``grid``. ``n_nodes``: how many nodes to wait for (default
    ``num_nodes(cfg)``, what ``fl-sim run`` starts; 0 = whichever registered, as under ``flwr run``)."""
    ctx, cfg = strategy.ctx, strategy.cfg
    callbacks = ctx.callbacks
    start = strategy.resume_or_init()
    strategy.summary()
    t_data = time.time()
    strategy.prepare_data()
    t_map = time.time()
    data_s = t_map - t_data
    want = num_nodes(cfg, len(ctx.fleet)) if n_nodes is None else n_nodes or None
    strategy.nodes = provision_nodes(grid, want, strategy.provision(), cfg.simulation.round_timeout_s, ctx.abort)
    map_s = time.time() - t_map
    log.info("provisioned %d nodes for %d devices%s in %.1f s", len(strategy.nodes), len(ctx.fleet),
             " and warmed the workers up" if cfg.simulation.warm_up else "", map_s)
    for cb in callbacks:
        cb.on_run_begin(strategy, start + 1)
    completed = False
    spent: dict[str, float] = {}  # seconds of the callbacks that ran after the previous round's record was logged
    try:
        for r in range(start + 1, cfg.rounds + 1):
            _check(ctx)
            for cb in callbacks:
                cb.on_round_begin(strategy, r)
            t0 = time.time()
            plan = strategy.plan_round(r)
            replies = [(plan.sampled[i], rep) for i, rep in
                       send_and_receive(grid, plan.messages, cfg.simulation.round_timeout_s, ctx.abort)]
            _check(ctx)  # stopped while devices worked: this round is not kept
            t1 = time.time()
            outcome = strategy.close_round(r, replies, plan)
            t2 = time.time()
            _check(ctx)
            record = RoundRecord(r, strategy.clock_s, plan.available, plan.sampled, outcome,
                                 strategy.totals["uplink_bytes"], strategy.totals["downlink_bytes"],
                                 {"train": t1 - t0, "aggregate": t2 - t1})
            if r == start + 1:  # node mapping (and worker warm-up) of this simulation, before its first round
                record.wall_s |= {"map_nodes": map_s, "prepare_data": data_s}
            else:
                record.wall_s["previous_round_callbacks"] = spent
            stop, spent = _after_round(strategy, callbacks, record, t0)
            if stop:
                log.info("a callback stopped the run after round %d", r)
                break
        completed = True
    finally:
        for cb in callbacks:
            cb.on_run_end(strategy, completed)


def _after_round(strategy, callbacks, record: RoundRecord, t0: float) -> tuple[bool, dict[str, float]]:
    """Each callback in turn, its figures joining the record. Until the record is logged (``logs_record``),
    a callback's seconds go into the record's ``wall_s`` (the evaluation's as ``evaluate``, and ``round``
    covers them); the seconds of those after it are returned, for the next round's record."""
    stop, after_log = False, {}
    for cb in callbacks:
        t = time.time()
        if getattr(cb, "logs_record", False):
            record.wall_s["round"] = t - t0
        report = cb.after_round(strategy, record)
        if isinstance(report, Report):
            record.figures |= report.figures
            stop = stop or report.stop
        spent = time.time() - t
        if "round" in record.wall_s:
            after_log[type(cb).__name__] = spent
        else:
            key = getattr(cb, "timer", None)
            if key:
                record.wall_s[key] = record.wall_s.get(key, 0.0) + spent
    record.wall_s.setdefault("round", time.time() - t0)
    return stop, after_log


def _check(ctx) -> None:
    if ctx.abort.is_set():
        raise BackendStopped("simulation backend stopped")
