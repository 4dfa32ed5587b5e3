"""``flwr run .``: the same experiment as a Flower App on a local simulation federation (a SuperLink that
``flwr`` starts itself, in this test's own Flower home), with the same results as ``fl-sim run``."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETS = ("zoo=tiny;rounds=2;seed=4;fleet.num_devices=4;strategy.clients_per_round=2;eval.n_test=8;"
        "fleet.samples_per_round=8;fleet.train_size=64;simulation.num_cpus=2;cache_dir={cache};"
        "cloud.teacher_replicas=0;cloud.eval_actors=0")  # the cloud on actors: test_ray_cluster.py


@pytest.fixture
def flwr_env(tmp_path):
    env = os.environ | {"FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
                        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    try:
        yield env
    finally:  # the local SuperLink flwr started outlives the command
        subprocess.run(["pkill", "-f", "flower-superlink --insecure --simulation"], capture_output=True)


def test_flwr_run_runs_the_experiment_as_fl_sim_run_does(flwr_env, tmp_path, cache_dir, tiny_zoo):
    from fl_sim.app.cli import parse_set_overrides
    from fl_sim.app.run import run_experiment
    from fl_sim.callbacks.results_file import read_results
    from fl_sim.config import load_config

    sets = SETS.format(cache=cache_dir)
    size = subprocess.run(["flwr", "federation", "simulation-config", "@none/default", "local",
                           "--num-supernodes", "4"], cwd=REPO, env=flwr_env, capture_output=True, text=True,
                          timeout=180)
    assert size.returncode == 0, size.stdout + size.stderr
    out = subprocess.run(["flwr", "run", ".", "--stream", "--run-config", f'set="{sets}"', "--run-config",
                          f'output-dir="{tmp_path / "app"}"'], cwd=REPO, env=flwr_env, capture_output=True,
                         text=True, timeout=600)
    assert "fl-sim: results in" in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]
    via_flwr = read_results(tmp_path / "app" / "quickstart" / "cdcca-4")
    cfg = load_config(REPO / "experiments" / "quickstart.toml",
                      parse_set_overrides(sets.split(";")) | {"output_dir": str(tmp_path / "sim")})
    via_fl_sim = read_results(run_experiment(cfg))
    keys = ("acc", "acc_tier", "uplink_bytes", "downlink_bytes", "participant_ids", "uploaded_samples")
    assert [r["round"] for r in via_flwr] == [1, 2]
    assert [{k: r[k] for k in keys} for r in via_flwr] == [{k: r[k] for k in keys} for r in via_fl_sim]
    assert json.loads((tmp_path / "app" / "quickstart" / "cdcca-4" / "device_env.json").read_text())["seed"] == 4
