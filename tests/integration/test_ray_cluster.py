"""fl-sim against a real Ray cluster on this machine: a head node started with ``ray start --head`` (loopback
only, its own temporary directory and port) for the devices and a second node with no CPUs for Ray's tasks and
a ``cloud`` resource, which holds the cloud's actors; a two-round CD-CCA run through the cluster's address,
then the cluster is stopped."""

import logging
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
import tomli_w
from conftest import CDCCA, tiny_config

from fl_sim.app.run import run_experiment
from fl_sim.callbacks import Callback
from fl_sim.callbacks.results_file import read_results

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


def test_the_cloud_on_its_own_node_gives_the_one_process_figures_through_dead_actors(cluster, cdcca_run, tmp_path,
                                                                                     cache_dir, caplog):
    """``cloud.resource`` pins the teacher's replica, the AKD and the evaluation actors to the node that has
    it; the devices run on the head (the cloud node has no CPU for them). ``cdcca_run`` has its teacher and
    evaluation in the test process (the tests' default): on actors of another node the figures are the
    same, even when the actors die before round 2 (a node lost) and are replaced. (Here the three groups ask
    for the same resources, so they share one process.)"""
    address, cloud_node = cluster
    _, here = cdcca_run
    kill = KillActors(at=2)
    cfg = tiny_config(CDCCA, tmp_path, cache_dir, **{"cloud.teacher_replicas": 1, "cloud.eval_actors": "auto",
                                                     "cloud.resource": "cloud", "simulation.ray_address": address})
    with caplog.at_level(logging.WARNING, logger="fl_sim.cloud.actors"):
        there = read_results(run_experiment(cfg, callbacks=[kill]))
    assert kill.killed == ["teacher", "akd", "eval"]
    for a, b in zip(here, there):
        for key in KEYS:
            assert a[key] == b[key], (a["round"], key)
    assert set(here[0]["cloud_actor_nodes"]) == {"akd"} and "eval_actor_nodes" not in here[0]
    for r in there:
        nodes = r["cloud_actor_nodes"]
        assert len(nodes["teacher"]) == 1 and len(nodes["akd"]) == 1 and len(r["eval_actor_nodes"]) == 1
        assert set(nodes["teacher"] + nodes["akd"] + r["eval_actor_nodes"]) == {cloud_node}
    died = {m.split()[1] for m in caplog.messages if "died" in m and "retried on a new actor" in m}
    assert "teacher" in died  # the first to use the shared process after it died replaces it for all


def test_an_unreachable_cluster_is_one_line(tmp_path, capsys):
    from fl_sim.app.cli import main

    (tmp_path / "e.toml").write_text(tomli_w.dumps({"zoo": "tiny", "output_dir": str(tmp_path / "runs")}))
    rc = main(["run", str(tmp_path / "e.toml"), "--ray-address", f"127.0.0.1:{_free_port()}", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no Ray cluster answers there" in err[0], err
    assert not (tmp_path / "runs").exists()
