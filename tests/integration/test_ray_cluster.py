"""fl-sim against a real Ray cluster on this machine: a head node started with ``ray start --head`` (loopback
only, its own temporary directory and port) for the devices and a second node with no CPUs for Ray's tasks and
a ``cloud`` resource, which holds the cloud's actors; a two-round CD-CCA run through ``--ray-address``, then
the cluster is stopped."""

import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
import tomli_w
from conftest import CDCCA, tiny_data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster():
    """``(address, the cloud node's id)`` of a two-node cluster: a head with 2 CPUs, a node with only a
    ``cloud`` resource."""
    ray = shutil.which("ray")
    assert ray, "the ray command comes with flwr[simulation]"
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths stay under 107 characters
    common = ["--node-ip-address=127.0.0.1", "--num-gpus=0", "--disable-usage-stats"]
    try:
        for args in (["--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}"],
                     [f"--address={address}", "--num-cpus=0", '--resources={"cloud": 1}']):
            start = subprocess.run([ray, "start", *args, *common], capture_output=True, text=True, timeout=120)
            assert start.returncode == 0, start.stdout + start.stderr
        find = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
                "print(*[n['NodeID'] for n in ray.nodes() if n['Alive'] and n['Resources'].get('cloud')])")
        node = subprocess.run([sys.executable, "-c", find], capture_output=True, text=True, timeout=120).stdout.split()
        assert len(node) == 1, node
        yield address, node[0]
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_the_cloud_on_its_own_node_and_the_devices_on_another(cluster, tmp_path, cache_dir, tiny_zoo):
    """``cloud.resource`` pins the teacher's two replicas, the AKD and the evaluation actors to the node
    that has it; the devices run on the head (the cloud node has no CPU for them)."""
    from fl_sim.callbacks.results_file import read_results

    address, cloud_node = cluster
    data = tiny_data(CDCCA, cache_dir, tmp_path / "runs") | {"name": "cluster"}
    data["cloud"] = {"teacher_replicas": 2, "eval_actors": "auto", "resource": "cloud"}
    (tmp_path / "e.toml").write_text(tomli_w.dumps(data))
    out = subprocess.run([sys.executable, "-m", "fl_sim.app.cli", "run", str(tmp_path / "e.toml"), "--ray-address",
                          address, "--quiet"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DEPRECATED" not in out.stderr  # Flower's notice about run_simulation is nothing a user can act on
    res = read_results(tmp_path / "runs" / "cluster" / "cdcca-3")
    assert [r["round"] for r in res] == [1, 2]
    assert all(r["participants"] == 4 and r["failed"] == 0 and r["uploaded_samples"] == 16 for r in res)
    for r in res:
        nodes = r["cloud_actor_nodes"]
        assert len(nodes["teacher"]) == 2 and len(nodes["akd"]) == 1 and len(r["eval_actor_nodes"]) == 1
        assert set(nodes["teacher"] + nodes["akd"] + r["eval_actor_nodes"]) == {cloud_node}


def test_an_unreachable_cluster_is_one_line(tmp_path, capsys):
    from fl_sim.app.cli import main

    (tmp_path / "e.toml").write_text(tomli_w.dumps({"zoo": "tiny", "output_dir": str(tmp_path / "runs")}))
    rc = main(["run", str(tmp_path / "e.toml"), "--ray-address", f"127.0.0.1:{_free_port()}", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no Ray cluster answers there" in err[0], err
    assert not (tmp_path / "runs").exists()
