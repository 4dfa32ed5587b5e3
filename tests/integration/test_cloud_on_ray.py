"""The cloud on Ray actors end to end (teacher replica, the tiers' AKD, evaluation): the figures of the cloud
in one process, through actors that die mid-run, and a lagging cloud (``strategy.cloud_lag``) that resumes."""

import logging
import shutil

from conftest import CDCCA, tiny_config

from fl_sim.app.run import resume_experiment, run_experiment
from fl_sim.callbacks import Callback
from fl_sim.callbacks.results_file import read_results

ON_ACTORS = {"cloud.teacher_replicas": 1, "cloud.eval_actors": "auto"}  # the defaults
KEYS = ("acc", "acc_tier", "uplink_bytes", "downlink_bytes", "uploaded_samples", "replay_size", "dwc_payload_bytes",
        "akd_loss", "virtual_time_s")


class KillActors(Callback):
    """Kills the first actor of every cloud group before round ``at`` (a node lost)."""

    def __init__(self, at: int):
        self.at, self.killed = at, []

    def on_round_begin(self, strategy, server_round):
        import ray

        if server_round == self.at:
            groups = [strategy.teachers, strategy.actors, strategy.ctx.callbacks[0].evaluator.actors]
            for g in groups:
                ray.kill(g._actors[0])
                self.killed.append(g.kind)


def test_cloud_actors_give_the_one_process_figures_through_dead_actors(cdcca_run, tmp_path, cache_dir, caplog):
    """``cdcca_run`` has its teacher and evaluation in the test process (the tests' default): the teacher's
    replica and the evaluator's actors give the same figures, even when they die before round 2."""
    _, here = cdcca_run
    kill = KillActors(at=2)
    with caplog.at_level(logging.WARNING, logger="fl_sim.cloud.actors"):
        there = read_results(run_experiment(tiny_config(CDCCA, tmp_path / "there", cache_dir, **ON_ACTORS),
                                            callbacks=[kill]))
    assert kill.killed == ["teacher", "akd", "eval"]
    for a, b in zip(here, there):
        for key in KEYS:
            assert a[key] == b[key], (a["round"], key)
    assert set(here[0]["cloud_actor_nodes"]) == {"akd"} and "eval_actor_nodes" not in here[0]
    assert set(there[0]["cloud_actor_nodes"]) == {"teacher", "akd"} and there[0]["eval_actor_nodes"]
    died = {m.split()[1] for m in caplog.messages if "died" in m and "retried on a new actor" in m}
    assert died == {"teacher", "akd", "eval"}


def test_a_lagging_cloud_resumes_with_its_work_in_flight(tmp_path, cache_dir, tiny_zoo):
    """Round 1's cloud work runs beside round 2's devices and lands in round 2's update (which then runs its
    own: the last round waits for its cloud). The checkpoint after round 1 holds round 1's uploads in flight;
    resumed from it, the run gives the uninterrupted figures."""
    cfg = tiny_config(CDCCA, tmp_path, cache_dir, **ON_ACTORS, **{"strategy.cloud_lag": 1})
    run_dir = run_experiment(cfg)
    full = read_results(run_dir)
    assert "uploaded_samples" not in full[0] and full[0]["rejected_uploads"] == 0  # nothing distilled yet
    assert full[1]["cloud_round"] == 2 and full[1]["lagged_cloud"]["cloud_round"] == 1
    assert full[1]["lagged_cloud"]["uploaded_samples"] == full[1]["uploaded_samples"] == 16
    assert full[1]["downlink_bytes"] == full[0]["downlink_bytes"]  # round 2: no update for devices yet
    shutil.rmtree(run_dir / "checkpoint" / "round-00002")
    resume_experiment(run_dir)
    resumed = read_results(run_dir)
    assert [r["round"] for r in resumed] == [1, 2]
    for a, b in zip(full, resumed):
        for key in KEYS[:3] + ("virtual_time_s",):
            assert a[key] == b[key], (a["round"], key)
    for key in ("uploaded_samples", "distilled_samples", "akd_loss", "dwc_payload_bytes"):
        assert resumed[1]["lagged_cloud"][key] == full[1]["lagged_cloud"][key], key
