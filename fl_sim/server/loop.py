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
    completed = False
    try:
        t_cloud = time.time()
        strategy.start_cloud()
        for cb in callbacks:
            cb.on_run_begin(strategy, start + 1)
        cloud_s = time.time() - t_cloud  # the cloud's actors start before round 1
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
                record.wall_s |= {"map_nodes": map_s, "prepare_data": data_s, "start_cloud": cloud_s}
            if _after_round(strategy, callbacks, record):
                log.info("a callback stopped the run after round %d", r)
                break
        completed = True
    finally:
        strategy.stop_cloud()
        for cb in callbacks:
            cb.on_run_end(strategy, completed)


def _after_round(strategy, callbacks, record: RoundRecord) -> bool:
    """Each callback in turn, its figures and timings joining the record; whether one asked to stop."""
    stop = False
    for cb in callbacks:
        report = cb.after_round(strategy, record)
        if isinstance(report, Report):
            record.figures |= report.figures
            record.wall_s |= report.wall_s
            stop = stop or report.stop
    return stop


def _check(ctx) -> None:
    if ctx.abort.is_set():
        raise BackendStopped("simulation backend stopped")
