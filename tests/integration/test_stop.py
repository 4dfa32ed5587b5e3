"""Stopping a run as ``timeout`` or a scheduler does (SIGTERM): the last checkpoint is kept, the reason is
written, no Ray process is left behind, and ``--resume`` continues it."""

import json
import signal
import subprocess
import sys
import time

import tomli_w
from conftest import FEDAVG, tiny_data


def _ray_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server|ray::|ray/dashboard|default_worker"],
                         capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def test_sigterm_keeps_the_checkpoint_and_leaves_no_ray_behind(tmp_path, cache_dir, tiny_zoo):
    from fl_sim.app.run import resume_experiment
    from fl_sim.callbacks.checkpoint_files import load_checkpoint
    from fl_sim.callbacks.results_file import read_results

    data = tiny_data(FEDAVG, cache_dir, tmp_path / "runs") | {"name": "stop", "rounds": 40}
    (tmp_path / "e.toml").write_text(tomli_w.dumps(data))
    before = _ray_pids()
    proc = subprocess.Popen([sys.executable, "-m", "fl_sim.app.cli", "run", str(tmp_path / "e.toml"), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "stop" / "fedavg-5"
    deadline = time.time() + 300
    while not (load_checkpoint(run_dir) if (run_dir / "checkpoint").is_dir() else None) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("fl-sim: stopped by SIGTERM: completed rounds are kept in ")
    assert "stopped by SIGTERM" in (run_dir / "error.txt").read_text()
    for _ in range(20):  # Ray's processes go with the run
        left = _ray_pids() - before
        if not left:
            break
        time.sleep(0.5)
    assert not left, left
    done = load_checkpoint(run_dir)[0]["round"]
    assert [r["round"] for r in read_results(run_dir)] == list(range(1, done + 1))
    resume_experiment(run_dir, {"rounds": done + 1})
    assert [r["round"] for r in read_results(run_dir)] == list(range(1, done + 2))
    assert json.loads((run_dir / "results.jsonl").read_text().splitlines()[-1])["round"] == done + 1
