"""End-to-end simulations through Flower's real ``run_simulation`` on the Ray backend (tiny presets)."""

import shutil

import pytest
from conftest import FEDAVG, tiny_config, tiny_run

from fl_sim import FlSimError
from fl_sim.app.run import resume_experiment, run_dir_for, run_experiment
from fl_sim.callbacks.results_file import read_results


def _cfg(tmp_path, cache_dir, **over):
    return tiny_config(FEDAVG, tmp_path, cache_dir, **over)


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory, cache_dir, tiny_zoo):
    return tiny_run(FEDAVG, tmp_path_factory, cache_dir, "sim")


def test_two_round_fedavg(fedavg_run):
    _, run_dir, res = fedavg_run
    assert [r["round"] for r in res] == [1, 2]
    for r in res:
        assert r["participants"] == 3 and r["sampled"] == 3 and r["failed"] == 0
        assert r["uplink_bytes"] > 0 and r["downlink_bytes"] > 0
        assert set(r["acc"]) == {"source", "dusk", "novel", "digits", "overall"}
        assert set(r["teacher_acc"]) == {"source", "dusk", "novel", "digits"}
        assert r["virtual_time_s"] > 0
    assert res[1]["cum_uplink_bytes"] == res[0]["uplink_bytes"] + res[1]["uplink_bytes"]
    assert res[1]["virtual_time_s"] == pytest.approx(res[0]["virtual_time_s"] + res[1]["round_virtual_s"])
    assert (run_dir / "config.toml").is_file() and (run_dir / "fleet.json").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def test_tensorboard_has_the_scalars(fedavg_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _ = fedavg_run
    ea = EventAccumulator(str(run_dir / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for tag in ("acc/overall", "acc/novel", "teacher_acc/source", "uplink_bytes", "cum_downlink_bytes",
                "virtual_time_s", "participants", "stragglers", "wall_s/train", "loss"):
        assert tag in tags, tag
    assert [e.step for e in ea.Scalars("acc/overall")] == [1, 2]


def test_bytes_equal_serialized_payloads(fedavg_run, cache_dir):
    """Recompute the round-1 downlink from the messages' content and compare with the record."""
    from flwr.app import RecordDict

    from fl_sim.fleet.profiles import load_trace
    from fl_sim.models.zoo import pretrain_zoo
    from fl_sim.protocol.device_task import task_record
    from fl_sim.protocol.records import payload_bytes, to_array_record
    from fl_sim.server.strategy import RunContext
    from strategies.fedavg import FedAvg

    tmp, run_dir, res = fedavg_run
    cfg = _cfg(tmp, cache_dir)
    fleet = load_trace(run_dir / "fleet.json", ["tiny-high", "tiny-low"])
    zoo = pretrain_zoo("tiny", seed=cfg.zoo_seed, cache_dir=cache_dir)
    s = FedAvg(RunContext(cfg, fleet, {k: str(v) for k, v in zoo.paths.items()}, run_dir))
    s.state = {t: s.initial_state(t) for t in s.tiers}
    chosen, _ = s.sample(1)
    expected = 0
    for p in chosen:  # built here from its parts, not by the strategy
        content = RecordDict({"task": task_record(s.device_task(p, 1)), "adapter": to_array_record(s.state[p.tier])})
        assert payload_bytes(content) == payload_bytes(s.message_content(p, 1)[1])
        expected += payload_bytes(content)
    assert res[0]["downlink_bytes"] == expected
    # independently: every device got its tier's fp32 adapter (4 bytes a value) plus a small envelope
    raw = sum(4 * sum(v.numel() for v in s.state[p.tier].values()) for p in chosen)
    assert raw < expected < raw + len(chosen) * 20_000
    raw_up = 3 * 4 * min(sum(v.numel() for v in s.state[t].values()) for t in s.tiers)
    assert res[0]["uplink_bytes"] >= raw_up


def test_resume_equals_uninterrupted(fedavg_run, cache_dir, tmp_path):
    """Kill after round 1 (simulated by deleting round 2's checkpoint and result), resume, compare."""
    _, run_dir, full = fedavg_run
    cut = tmp_path / "cut"
    shutil.copytree(run_dir, cut)
    shutil.rmtree(cut / "checkpoint" / "round-00002")
    resume_experiment(cut)
    resumed = read_results(cut)
    assert [r["round"] for r in resumed] == [1, 2]
    for a, b in zip(full, resumed):
        for key in ("acc", "acc_tier", "uplink_bytes", "downlink_bytes", "virtual_time_s", "participants"):
            assert a[key] == b[key], key
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_failing_devices_are_counted_and_round_goes_on(tmp_path, cache_dir, tiny_zoo):
    cfg = _cfg(tmp_path, cache_dir, **{"strategy.name": "source-only", "fleet.crash_prob": 0.5, "rounds": 2})
    res = read_results(run_experiment(cfg))
    assert [r["round"] for r in res] == [1, 2]
    assert sum(r["failed"] for r in res) >= 1
    assert all(r["participants"] + r["failed"] == r["sampled"] for r in res)
    assert all(r["uplink_bytes"] > 0 or r["participants"] == 0 for r in res)


def test_workers_warm_up_before_round_one(fedavg_run):
    _, _, res = fedavg_run
    assert res[0]["wall_s"]["map_nodes"] > 0  # node mapping + warm-up, logged with the first round only
    assert "map_nodes" not in res[1]["wall_s"]
    after = res[1]["wall_s"]["previous_round_callbacks"]  # round 1's results and checkpoint writing
    assert set(after) == {"after_the_record"} and after["after_the_record"] > 0
    assert all(0 < r["wall_s"]["evaluate"] < r["wall_s"]["round"] for r in res)  # the round's time covers it


def test_warm_up_loads_every_tier_and_domain_once(fedavg_run, cache_dir, tiny_zoo):
    from clients import warm_up
    from fl_sim.device import model_cache
    from fl_sim.fleet.profiles import load_trace
    from fl_sim.server.strategy import RunContext
    from strategies.fedavg import FedAvg

    tmp, run_dir, _ = fedavg_run
    cfg = _cfg(tmp, cache_dir)
    fleet = load_trace(run_dir / "fleet.json", list(tiny_zoo.tiers))
    s = FedAvg(RunContext(cfg, fleet, {k: str(v) for k, v in tiny_zoo.paths.items()}, run_dir))
    visits = s.first_visits()
    pairs = {(p.tier, p.domain_at(r)) for p in fleet for r in (1, 2)}
    assert {(fleet[d].tier, fleet[d].domain_at(r)) for d, r in visits} == pairs and len(visits) == len(pairs)
    env = str(run_dir / "device_env.json")
    warm_up._DONE.clear()
    model_cache.adapted_model.cache_clear()
    assert warm_up.warm_up(env, [(s.device.name, d, r) for d, r in visits]) == len(visits)
    assert model_cache.adapted_model.cache_info().currsize == len(tiny_zoo.tiers)
    assert warm_up.warm_up(env, [(s.device.name, d, r) for d, r in visits]) == 0  # once per process


def test_device_pools_are_cached_on_disk_and_equal_the_partition(cache_dir, tiny_zoo):
    import numpy as np

    from fl_sim.cache import cache_root
    from fl_sim.device import model_cache
    from fl_sim.world.data import partition

    args = ("dusk", 64, 5, cache_dir, 6, "dirichlet", "family", 0.5)
    model_cache.device_pools.cache_clear()
    pools = model_cache.device_pools(*args)
    ds = model_cache.split("dusk", "train", 64, 5, cache_dir)
    ds = ds.add_column("row", np.arange(len(ds)))
    direct = [np.asarray(p["row"]) for p in partition(ds, 6, by="family", alpha=0.5, seed=5)]
    assert len(pools) == 6 and all(np.array_equal(a, b) for a, b in zip(pools, direct))
    assert sorted(np.concatenate(pools).tolist()) == sorted(np.concatenate(direct).tolist())
    folders = list((cache_root(cache_dir) / "data").glob("pools-dusk-*"))
    assert folders
    for f in folders:  # a damaged entry is rebuilt, never used
        (f / "rows.npy").write_bytes(b"garbage")
    model_cache.device_pools.cache_clear()
    again = model_cache.device_pools(*args)
    assert all(np.array_equal(a, b) for a, b in zip(again, pools))


def test_replaying_its_own_directory_is_refused(tmp_path, cache_dir, tiny_zoo):
    own = run_dir_for(_cfg(tmp_path, cache_dir))
    with pytest.raises(FlSimError, match="names this run's own directory"):
        run_experiment(_cfg(tmp_path, cache_dir, **{"fleet.replay": str(own)}))
    assert not (own / "config.toml").exists()


def test_a_failing_round_writes_its_traceback_and_keeps_the_rounds_before(tmp_path, cache_dir, tiny_zoo,
                                                                          monkeypatch):
    from fl_sim.server.strategy import FleetStrategy

    original = FleetStrategy.update

    def broken_second_round(self, server_round, kept, replied, plan):
        if server_round == 2:
            raise IndexError("list index out of range")
        return original(self, server_round, kept, replied, plan)

    monkeypatch.setattr(FleetStrategy, "update", broken_second_round)
    cfg = _cfg(tmp_path, cache_dir, **{"strategy.name": "source-only"})
    run_dir = run_dir_for(cfg)
    with pytest.raises(FlSimError, match=r"IndexError: list index out of range; traceback in .*error\.txt"):
        run_experiment(cfg)
    text = (run_dir / "error.txt").read_text()
    assert text.startswith("Traceback") and "broken_second_round" in text and "IndexError" in text
    assert [r["round"] for r in read_results(run_dir)] == [1]
    monkeypatch.setattr(FleetStrategy, "update", original)
    resume_experiment(run_dir)
    assert [r["round"] for r in read_results(run_dir)] == [1, 2]
    assert not (run_dir / "error.txt").exists()


def test_running_another_experiment_into_a_run_directory_is_refused(fedavg_run, cache_dir):
    """``fl-sim run`` into a directory that holds a run of different settings would continue that run's
    checkpoint under the new settings and overwrite its config.toml; it is refused and nothing changes."""
    tmp, run_dir, _ = fedavg_run
    before = (run_dir / "config.toml").read_text()
    with pytest.raises(FlSimError, match=r"holds a different experiment \(differs in strategy\).*--resume"):
        run_experiment(_cfg(tmp, cache_dir, **{"strategy.local_steps": 3}))
    assert (run_dir / "config.toml").read_text() == before


def test_a_failing_simulation_engine_writes_its_traceback(tmp_path, cache_dir, tiny_zoo, monkeypatch):
    import flwr.simulation

    def engine_down(**kw):
        raise RuntimeError("ray cluster unreachable")

    monkeypatch.setattr(flwr.simulation, "run_simulation", engine_down)
    cfg = _cfg(tmp_path, cache_dir)
    with pytest.raises(FlSimError, match=r"Flower simulation failed \(RuntimeError: ray cluster unreachable\).*"
                                         r"traceback in .*error\.txt"):
        run_experiment(cfg)
    text = (run_dir_for(cfg) / "error.txt").read_text()
    assert "engine_down" in text and "ray cluster unreachable" in text
