"""Multi-stage domain schedules (parsing, drawing, traces) and the continual-learning figures."""

import json
import math

import numpy as np
import pytest
from conftest import FEDAVG, tiny_config

from fl_sim import FlSimError
from fl_sim.callbacks.continual import continual_metrics
from fl_sim.config import parse_config
from fl_sim.fleet.profiles import load_trace, make_fleet, save_trace, schedule

DOMAINS = ["source", "dusk", "novel", "digits"]


def test_a_schedule_parses_prints_and_mixes_domains():
    stages = schedule.parse("source@1, dusk@4~2, novel@7, source@10", DOMAINS)
    assert schedule.format_stages(stages) == "source@1, dusk@4~2, novel@7, source@10"
    assert schedule.mix_at(stages, 3) == [("source", 1.0)]
    assert schedule.mix_at(stages, 4) == [("source", pytest.approx(2 / 3)), ("dusk", pytest.approx(1 / 3))]
    assert schedule.mix_at(stages, 5) == [("source", pytest.approx(1 / 3)), ("dusk", pytest.approx(2 / 3))]
    assert schedule.mix_at(stages, 6) == [("dusk", 1.0)]
    assert schedule.mix_at(stages, 12) == [("source", 1.0)]


@pytest.mark.parametrize("text,match", [
    ("dusk@2", "first stage must start in round 1"),
    ("source@1, dusk@3, novel@3", "out of order"),
    ("source@1, moon@3", "unknown domain 'moon'"),
    ("source@1, dusk@3~3, novel@5", "runs into the next stage"),
    ("source@1~2", "no previous domain"),
    ("source", "not DOMAIN@ROUND"),
])
def test_a_bad_schedule_says_what_is_wrong(text, match):
    with pytest.raises(ValueError, match=match):
        schedule.parse(text, DOMAINS)


def test_drawn_schedules_are_seeded_per_device_and_leave_the_rest_of_the_profile_alone():
    base = {"rounds": 12, "strategy": {"clients_per_round": 2}, "fleet": {"num_devices": 30}}
    plain = make_fleet(parse_config(base).fleet, ["a", "b"], 3)
    with_stages = {"schedule": {"stages": [3, 4], "stage_rounds": [2, 3], "ramp_rounds": [0, 1]}}
    cfg = parse_config(base | {"fleet": base["fleet"] | with_stages})
    one, two = make_fleet(cfg.fleet, ["a", "b"], 3), make_fleet(cfg.fleet, ["a", "b"], 3)
    assert one == two and len({p.schedule for p in one}) > 1
    for p, q in zip(one, plain):
        assert (p.tier, p.compute_ms_per_sample, p.phase_s) == (q.tier, q.compute_ms_per_sample, q.phase_s)
        stages = schedule.parse(p.schedule, DOMAINS)
        assert 3 <= len(stages) <= 4 and stages[0].domain == stages[-1].domain == "source"
        assert all(a.domain != b.domain for a, b in zip(stages, stages[1:]))
        assert all(2 <= b.start - a.start <= 3 for a, b in zip(stages, stages[1:]))
    assert all(p.schedule == "" and p.domain_at(1) == "source" for p in plain)  # one shift, as before


def test_schedules_in_a_trace_are_checked_row_by_row(tmp_path):
    fleet = make_fleet(parse_config({"strategy": {"clients_per_round": 2}, "fleet": {"num_devices": 3}}).fleet,
                       ["tiny-high"], 0)
    save_trace(fleet, tmp_path / "t.json")
    rows = json.loads((tmp_path / "t.json").read_text())
    rows[1]["schedule"] = "source@1, dusk@2, novel+x@4"
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    with pytest.raises(FlSimError, match=r"row 2 column schedule \(device 1\): unknown domain 'novel\+x'"):
        load_trace(tmp_path / "bad.json", ["tiny-high"])
    rows[1]["schedule"] = "source@1, dusk@3~2"
    (tmp_path / "long.json").write_text(json.dumps(rows))
    assert load_trace(tmp_path / "long.json", ["tiny-high"])[1].mix_at(4) == [("source", pytest.approx(1 / 3)),
                                                                        ("dusk", pytest.approx(2 / 3))]
    from fl_sim.app.preflight import check_run

    cfg = tiny_config(FEDAVG, tmp_path, None, **{"fleet.trace": str(tmp_path / "long.json"), "rounds": 3})
    with pytest.raises(FlSimError, match="row 2 column schedule .* longer than the run"):
        check_run(cfg)


def test_the_continual_figures_on_a_hand_made_history():
    # one tier; source in rounds 1-2, dusk in 3-4, source again from 5
    current = {"t": {1: {"source"}, 2: {"source"}, 3: {"dusk"}, 4: {"dusk"}, 5: {"source"}}}
    history = {1: {"t": {"source": 0.9, "dusk": 0.2}}, 2: {"t": {"source": 0.8, "dusk": 0.3}},
               3: {"t": {"source": 0.6, "dusk": 0.5}}, 4: {"t": {"source": 0.5, "dusk": 0.7}},
               5: {"t": {"source": 0.7, "dusk": 0.6}}}
    shares = {"t": 1.0}
    at = {r: continual_metrics(history, current, shares, r) for r in history}
    assert at[2]["acc_seen"] == pytest.approx(0.8) and at[2]["forgetting"] == pytest.approx(0.1)
    assert math.isnan(at[2]["bwt"])  # no domain left yet
    assert at[4]["acc_seen"] == pytest.approx((0.5 + 0.7) / 2)
    assert at[4]["forgetting"] == pytest.approx((0.4 + 0.0) / 2)  # source from its best 0.9; dusk at its best
    assert at[4]["bwt"] == pytest.approx(0.5 - 0.8)  # source since its stage ended (round 2)
    assert at[5]["bwt"] == pytest.approx(0.6 - 0.7)  # dusk since round 4; source is current again
    assert at[5]["forgetting"] == pytest.approx((0.2 + 0.1) / 2)
    two = continual_metrics({1: {"a": {"source": 1.0}, "b": {"source": 0.0}}},
                            {"a": {1: {"source"}}, "b": {1: {"source"}}}, {"a": 0.75, "b": 0.25}, 1)
    assert two["acc_seen"] == pytest.approx(0.75)  # tiers weighted by their share of the fleet


@pytest.mark.slow
def test_three_stages_end_to_end(tmp_path, cache_dir, tiny_zoo):
    from fl_sim.app.run import run_experiment
    from fl_sim.callbacks.results_file import read_results

    fleet = make_fleet(parse_config({"strategy": {"clients_per_round": 2}, "fleet": {"num_devices": 4}}).fleet,
                       list(tiny_zoo.tiers), 5)
    save_trace(fleet, tmp_path / "t.json")
    rows = json.loads((tmp_path / "t.json").read_text())
    for i, row in enumerate(rows):
        row["schedule"] = ["source@1, dusk@2, source@3", "source@1, novel@2~1, source@3"][i % 2]
    (tmp_path / "t.json").write_text(json.dumps(rows))
    cfg = tiny_config(FEDAVG, tmp_path, cache_dir, **{"fleet.trace": str(tmp_path / "t.json"), "rounds": 3})
    res = read_results(run_experiment(cfg))
    assert [r["round"] for r in res] == [1, 2, 3]
    assert all(np.isfinite(r["acc_seen"]) and r["forgetting"] >= 0 for r in res)
    assert res[0]["bwt"] is None  # NaN in results.jsonl: no domain left yet
    assert isinstance(res[2]["bwt"], float)  # dusk and novel were left in round 3
