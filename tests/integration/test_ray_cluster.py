"""fl-sim against a real Ray cluster: a head node started here with ``ray start --head`` (loopback only, its
own temporary directory and port), a two-round run through ``--ray-address``, then the cluster is stopped."""

import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
import tomli_w
from conftest import FEDAVG, tiny_data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    ray = shutil.which("ray")
    assert ray, "the ray command comes with flwr[simulation]"
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths stay under 107 characters
    start = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                            "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                            f"--temp-dir={temp}"], capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_run_on_a_ray_cluster_through_ray_address(ray_head, tmp_path, cache_dir, tiny_zoo):
    from fl_sim.callbacks.results_file import read_results

    data = tiny_data(FEDAVG, cache_dir, tmp_path / "runs") | {"name": "cluster"}
    (tmp_path / "e.toml").write_text(tomli_w.dumps(data))
    out = subprocess.run([sys.executable, "-m", "fl_sim.app.cli", "run", str(tmp_path / "e.toml"), "--ray-address",
                          ray_head, "--quiet"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DEPRECATED" not in out.stderr  # Flower's notice about run_simulation is nothing a user can act on
    res = read_results(tmp_path / "runs" / "cluster" / "fedavg-5")
    assert [r["round"] for r in res] == [1, 2]
    assert all(r["participants"] == 3 and r["failed"] == 0 and r["uplink_bytes"] > 0 for r in res)
    assert "acc" in res[-1]


def test_an_unreachable_cluster_is_one_line(tmp_path, capsys):
    from fl_sim.app.cli import main

    (tmp_path / "e.toml").write_text(tomli_w.dumps({"zoo": "tiny", "output_dir": str(tmp_path / "runs")}))
    rc = main(["run", str(tmp_path / "e.toml"), "--ray-address", f"127.0.0.1:{_free_port()}", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no Ray cluster answers there" in err[0], err
    assert not (tmp_path / "runs").exists()
