import json

import pytest

from fl_sim import FlSimError
from fl_sim.config import FleetConfig, load_config, parse_config
from fl_sim.fleet.profiles import DeviceProfile, load_participation, load_trace, make_fleet, save_trace


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
    with pytest.raises(FlSimError, match="row 2 column tier: unknown tier 'z'"):
        load_trace(tmp_path / "bad.json", ["x"])
    del rows[0]["phase_s"]
    (tmp_path / "bad2.json").write_text(json.dumps(rows))
    with pytest.raises(FlSimError, match=r"row 1: missing column\(s\) phase_s"):
        load_trace(tmp_path / "bad2.json", ["x"])


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(FlSimError, match="unknown key 'fleet.num_device'"):
        parse_config({"zoo": "tiny", "fleet": {"num_device": 3}})
    with pytest.raises(FlSimError, match="strategy.clients_per_round: Input should be greater than or equal to 1"):
        parse_config({"zoo": "tiny", "strategy": {"clients_per_round": 0}})
    from fl_sim.plugins import check_strategy

    allowed = "source-only, tent, fedavg, fedprox, cloud-kd-full, cdcca"
    with pytest.raises(FlSimError, match=f"unknown strategy 'fedsgd'; allowed: {allowed}"):
        check_strategy(parse_config({"zoo": "tiny", "strategy": {"name": "fedsgd"}}).strategy.name)
    with pytest.raises(FlSimError, match="unknown tier 'phone-high'"):
        parse_config({"zoo": "tiny", "fleet": {"tiers": {"phone-high": 1.0}}})
    with pytest.raises(FlSimError, match=r"shift_domains: unknown domain 'moon'; allowed: .*A\+B"):
        parse_config({"zoo": "tiny", "fleet": {"shift_domains": {"moon": 1.0}}})
    (tmp_path / "bad.toml").write_text("rounds = [")
    with pytest.raises(FlSimError, match="malformed TOML"):
        load_config(tmp_path / "bad.toml")
    cfg = parse_config({"zoo": "tiny"}, {"strategy.name": "fedprox", "rounds": 7})
    assert cfg.strategy.name == "fedprox" and cfg.rounds == 7


def test_sampling_is_deterministic_and_respects_availability():
    from fl_sim.server.selection import sample_devices

    cfg = parse_config({"zoo": "tiny", "seed": 3, "fleet": {"num_devices": 40}, "strategy": {"clients_per_round": 5}})
    fleet = make_fleet(cfg.fleet, ["tiny-high", "tiny-low"], cfg.seed)
    for r, clock in ((1, 0.0), (2, 700.0), (3, 1900.0)):
        a, n_av = sample_devices(fleet, clock, 5, 1.3, cfg.seed, r)
        b, _ = sample_devices(fleet, clock, 5, 1.3, cfg.seed, r)
        assert [p.device_id for p in a] == [p.device_id for p in b]
        assert len(a) == 7 and all(p.available(clock) for p in a)  # ceil(5 * 1.3)
        assert n_av == sum(p.available(clock) for p in fleet) < len(fleet)
    one, two = (sample_devices(fleet, 0.0, 5, 1.3, cfg.seed, r)[0] for r in (1, 2))
    assert [p.device_id for p in one] != [p.device_id for p in two]


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


def test_replay_samples_and_keeps_the_recorded_devices_whatever_their_times():
    from fl_sim.server.selection import sample_devices
    from fl_sim.server.timing import straggler_cut

    cfg = parse_config({"zoo": "tiny", "fleet": {"num_devices": 12}, "strategy": {"clients_per_round": 2}})
    fleet = make_fleet(cfg.fleet, ["tiny-high", "tiny-low"], cfg.seed)
    unavailable = [p.device_id for p in fleet if not p.available(0.0) and p.device_id not in (4, 5)]
    assert unavailable  # so the replay below samples a device the clock would not
    recorded = sorted([4, 5, unavailable[0]])
    sampled, n_available = sample_devices(fleet, 0.0, 2, 1.3, cfg.seed, 1, replayed=recorded)
    assert [p.device_id for p in sampled] == recorded and n_available == sum(p.available(0.0) for p in fleet)
    times = {d: 50.0 if d == 4 else 1.0 + d / 100 for d in recorded}  # device 4 is the slowest by far
    cut = straggler_cut(times, 2, 600.0, len(recorded), replay_kept=[4, 5])
    assert sorted(cut.kept) == [4, 5] and cut.round_s == 50.0
    timed = straggler_cut(times, 2, 600.0, len(recorded))  # the same devices without replay: 4 straggles
    assert timed.kept == sorted(set(recorded) - {4}) and timed.round_s == times[recorded[-1]]


def test_straggler_cut_keeps_the_fastest_within_the_deadline():
    from fl_sim.server.timing import straggler_cut

    times = {0: 5.0, 1: 2.0, 2: 700.0, 3: 2.0, 4: 9.0}
    cut = straggler_cut(times, 3, 600.0, 5)
    assert cut.kept == [1, 3, 0] and cut.on_time == 4 and cut.round_s == 5.0  # ties by device id
    short = straggler_cut(times, 3, 4.0, 5)  # only two make the deadline: the server waits it out
    assert short.kept == [1, 3] and short.on_time == 2 and short.round_s == 4.0
    assert straggler_cut({}, 3, 600.0, 3).round_s == 600.0  # nobody replied
    assert straggler_cut({7: 3.0}, 3, 600.0, 1).round_s == 3.0  # fewer sampled than K: done when all are in


def test_profile_table_gives_back_every_profile():
    """A worker's columnar fleet (fl_sim.fleet.profile_table) rebuilds each device's profile, schedules included,
    in far fewer bytes than the profiles."""
    from fl_sim.config import ScheduleConfig
    from fl_sim.fleet.profile_table import ProfileTable

    for cfg in (FleetConfig(num_devices=300), FleetConfig(num_devices=300, schedule=ScheduleConfig())):
        fleet = make_fleet(cfg, ["a", "b"], seed=4)
        table = ProfileTable(fleet)
        assert len(table) == len(fleet) and [table[i] for i in range(len(fleet))] == fleet
        assert table[-1] == fleet[-1] and table.nbytes() < 300 * len(fleet)
        with pytest.raises(IndexError):
            table[len(fleet)]
    assert any(p.schedule for p in fleet)
