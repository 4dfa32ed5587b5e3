import json

import pytest

from fl_sim import FlSimError
from fl_sim.config import FleetConfig, load_config, parse_config
from fl_sim.fleet import DeviceProfile, load_participation, load_trace, make_fleet, save_trace


def _profile(**kw):
    base = dict(device_id=0, tier="a", compute_ms_per_sample=50.0, uplink_kbps=1000.0, downlink_kbps=8000.0,
                active_period_s=100.0, active_fraction=0.25, phase_s=10.0, shift_round=3, shift_domain="novel")
    return DeviceProfile(**(base | kw))


def test_cost_model_arithmetic():
    p = _profile()
    assert p.compute_s(n_infer=32, n_train=64) == pytest.approx((32 + 3 * 64) * 50 / 1000)
    # 125,000 bytes = 1,000 kbit: 1 s at 1,000 kbps up; 1,000,000 bytes down = 8,000 kbit: 1 s at 8,000 kbps
    assert p.comm_s(down_bytes=1_000_000, up_bytes=125_000) == pytest.approx(2.0)


def test_availability_and_schedule():
    p = _profile()
    # active while (t + 10) mod 100 < 25
    assert p.available(0) and p.available(14.9) and not p.available(15.1) and p.available(90.0)
    assert [p.domain_at(r) for r in (1, 2, 3, 4)] == ["source", "source", "novel", "novel"]


def test_fleet_draw_is_seeded_per_device():
    cfg = FleetConfig(num_devices=50)
    a, b = make_fleet(cfg, ["x", "y"], seed=1), make_fleet(cfg, ["x", "y"], seed=1)
    assert a == b and a != make_fleet(cfg, ["x", "y"], seed=2)
    bigger = make_fleet(FleetConfig(num_devices=80), ["x", "y"], seed=1)
    assert bigger[:50] == a  # a device's profile does not depend on fleet size
    assert {p.tier for p in a} == {"x", "y"}
    assert all(20 <= p.compute_ms_per_sample <= 120 and 2 <= p.shift_round <= 3 for p in a)


def test_trace_round_trip_and_errors(tmp_path):
    fleet = make_fleet(FleetConfig(num_devices=5), ["x"], seed=0)
    save_trace(fleet, tmp_path / "f.json")
    assert load_trace(tmp_path / "f.json", ["x"]) == fleet
    rows = json.loads((tmp_path / "f.json").read_text())
    import csv

    with open(tmp_path / "f.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert load_trace(tmp_path / "f.csv", ["x"]) == fleet
    rows[1]["tier"] = "z"
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    with pytest.raises(FlSimError, match="row 1: unknown tier 'z'"):
        load_trace(tmp_path / "bad.json", ["x"])
    del rows[0]["phase_s"]
    (tmp_path / "bad2.json").write_text(json.dumps(rows))
    with pytest.raises(FlSimError, match=r"row 0: missing \['phase_s'\]"):
        load_trace(tmp_path / "bad2.json", ["x"])


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(FlSimError, match="unknown key 'fleet.num_device'"):
        parse_config({"zoo": "tiny", "fleet": {"num_device": 3}})
    with pytest.raises(FlSimError, match="strategy.clients_per_round: Input should be greater than or equal to 1"):
        parse_config({"zoo": "tiny", "strategy": {"clients_per_round": 0}})
    with pytest.raises(FlSimError, match="unknown strategy 'fedsgd'; allowed: source-only, tent, fedavg, fedprox, cloud-kd-full, cdcca"):
        parse_config({"zoo": "tiny", "strategy": {"name": "fedsgd"}})
    with pytest.raises(FlSimError, match="unknown tier 'phone-high'"):
        parse_config({"zoo": "tiny", "fleet": {"tiers": {"phone-high": 1.0}}})
    with pytest.raises(FlSimError, match="unknown domain 'moon' in shift_domains"):
        parse_config({"zoo": "tiny", "fleet": {"shift_domains": {"moon": 1.0}}})
    (tmp_path / "bad.toml").write_text("rounds = [")
    with pytest.raises(FlSimError, match="malformed TOML"):
        load_config(tmp_path / "bad.toml")
    cfg = parse_config({"zoo": "tiny"}, {"strategy.name": "fedprox", "rounds": 7})
    assert cfg.strategy.name == "fedprox" and cfg.rounds == 7


def test_sampling_is_deterministic_and_respects_availability(tmp_path):
    from strategies.base import RunContext
    from strategies.fedavg import FedAvg

    cfg = parse_config({"zoo": "tiny", "seed": 3, "fleet": {"num_devices": 40}, "strategy": {"clients_per_round": 5}})
    fleet = make_fleet(cfg.fleet, ["tiny-high", "tiny-low"], cfg.seed)
    s1 = FedAvg(RunContext(cfg, fleet, {}, tmp_path))
    s2 = FedAvg(RunContext(cfg, fleet, {}, tmp_path))
    for r, clock in ((1, 0.0), (2, 700.0), (3, 1900.0)):
        s1.clock_s = s2.clock_s = clock
        a, n_av = s1.sample(r)
        b, _ = s2.sample(r)
        assert [p.device_id for p in a] == [p.device_id for p in b]
        assert len(a) == 7 and all(p.available(clock) for p in a)  # ceil(5 * 1.3)
        assert n_av == sum(p.available(clock) for p in fleet) < len(fleet)
    s1.clock_s = 0.0
    assert [p.device_id for p in s1.sample(1)[0]] != [p.device_id for p in s1.sample(2)[0]]


def _results(path, rounds):
    path.write_text("".join(json.dumps(r) + "\n" for r in rounds))
    return path


def test_participation_replay_loads_and_refuses_bad_records(tmp_path):
    fleet = make_fleet(FleetConfig(num_devices=4), ["a", "b"], seed=0)
    save_trace(fleet, tmp_path / "fleet.json")
    good = [{"round": 1, "sampled_ids": [0, 2, 3], "participant_ids": [2, 3]},
            {"round": 2, "sampled_ids": [1, 3], "participant_ids": [1]}]
    _results(tmp_path / "results.jsonl", good)
    assert load_participation(tmp_path, 2, fleet, 2) == {1: ([0, 2, 3], [2, 3]), 2: ([1, 3], [1])}
    assert load_participation(tmp_path / "results.jsonl", 1, fleet, 2)[1] == ([0, 2, 3], [2, 3])
    with pytest.raises(FlSimError, match="no record of round"):
        load_participation(tmp_path, 3, fleet, 2)
    with pytest.raises(FlSimError, match="kept 2 devices, more than this run's clients_per_round"):
        load_participation(tmp_path, 2, fleet, 1)
    with pytest.raises(FlSimError, match="another fleet"):
        load_participation(tmp_path, 2, make_fleet(FleetConfig(num_devices=4), ["a", "b"], seed=1), 2)
    with pytest.raises(FlSimError, match="no results.jsonl"):
        load_participation(tmp_path / "nowhere", 2, fleet, 2)
    bad = {"lacks 'participant_ids'": [{"round": 1, "sampled_ids": [0]}],
           "device id 4 is not in 0..3": [{"round": 1, "sampled_ids": [0, 4], "participant_ids": [0]}],
           "kept devices not sampled": [{"round": 1, "sampled_ids": [0], "participant_ids": [1]}],
           "repeated device ids": [{"round": 1, "sampled_ids": [0, 0], "participant_ids": [0]}],
           "not a round record": [{"round": 1, "sampled_ids": None, "participant_ids": []}]}
    for i, (what, recs) in enumerate(bad.items()):
        (tmp_path / f"bad{i}").mkdir()
        save_trace(fleet, tmp_path / f"bad{i}" / "fleet.json")
        with pytest.raises(FlSimError, match=what):
            load_participation(_results(tmp_path / f"bad{i}" / "results.jsonl", recs), 1, fleet, 2)
    (tmp_path / "notrace").mkdir()
    with pytest.raises(FlSimError, match="no fleet.json"):
        load_participation(_results(tmp_path / "notrace" / "results.jsonl", good), 1, fleet, 2)


class _Reply:
    """What ``aggregate_train`` reads of a Flower reply. flwr builds a ``Message`` only inside a running app
    (its task identity must be set), so this unit test uses these fields alone; the paired comparison in
    ``test_compare`` runs the same code on real replies."""

    def __init__(self, node, n_infer):
        from flwr.app import MetricRecord, RecordDict

        self.metadata = type("Meta", (), {"src_node_id": node})()
        self.content = RecordDict({"metrics": MetricRecord({"n_infer": n_infer, "n_train": 0, "online_acc": 0.5,
                                                            "loss": 0.0})})

    def has_error(self):
        return False


def test_replay_samples_and_keeps_the_recorded_devices_whatever_their_times(tmp_path):
    from strategies.base import RunContext
    from strategies.fedavg import FedAvg

    cfg = parse_config({"zoo": "tiny", "fleet": {"num_devices": 12}, "strategy": {"clients_per_round": 2}})
    fleet = make_fleet(cfg.fleet, ["tiny-high", "tiny-low"], cfg.seed)
    unavailable = [p.device_id for p in fleet if not p.available(0.0) and p.device_id not in (4, 5)]
    assert unavailable  # so the replay below samples a device the clock would not
    recorded = sorted([4, 5, unavailable[0]])

    def round_one(replay):
        s = FedAvg(RunContext(cfg, fleet, {}, tmp_path, replay=replay))
        s.node_of = {p.device_id: 100 + p.device_id for p in fleet}
        sampled = [p.device_id for p in s.sample(1)[0]] if replay else recorded
        s._round_info = {"sampled": sampled, "available": 12, "down": {d: 1000 for d in sampled}}
        # device 4 infers 100x more samples than the others: the slowest by far
        s.aggregate_train(1, [_Reply(100 + d, 3200 if d == 4 else 32) for d in sampled])
        return sampled, s._round_info

    sampled, info = round_one({1: (recorded, [4, 5])})
    assert sampled == recorded and info["participant_ids"] == [4, 5]
    assert info["stragglers"] == len(recorded) - 2
    _, timed = round_one(None)  # the same devices without replay: the slow device 4 is a straggler
    assert timed["participant_ids"] == sorted(set(recorded) - {4})
