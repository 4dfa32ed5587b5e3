"""A lagging cloud (``strategy.cloud_lag``) end to end: its work in flight across a checkpoint. (The cloud's
actors on a node of their own, dying mid-run: ``test_ray_cluster.py``.)"""

import shutil

from conftest import CDCCA, tiny_config

from fl_sim.app.run import resume_experiment, run_experiment
from fl_sim.callbacks.results_file import read_results

KEYS = ("acc", "acc_tier", "uplink_bytes", "downlink_bytes", "virtual_time_s")


def test_a_lagging_cloud_resumes_with_its_work_in_flight(tmp_path, cache_dir, tiny_zoo):
    """Round 1's cloud work runs beside round 2's devices and lands in round 2's update (which then runs its
    own: the last round waits for its cloud). The checkpoint after round 1 holds round 1's uploads in flight;
    resumed from it, the run gives the uninterrupted figures."""
    cfg = tiny_config(CDCCA, tmp_path, cache_dir, **{"strategy.cloud_lag": 1, "cloud.teacher_replicas": 1})
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
        for key in KEYS:
            assert a[key] == b[key], (a["round"], key)
    for key in ("uploaded_samples", "distilled_samples", "akd_loss", "dwc_payload_bytes"):
        assert resumed[1]["lagged_cloud"][key] == full[1]["lagged_cloud"][key], key
