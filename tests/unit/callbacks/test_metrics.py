"""Per-round metrics: results.jsonl is standard JSON, TensorBoard gets flat scalars, resume truncates."""

import json
import math

from fl_sim.callbacks.results_file import MetricsLogger, finite_json, flatten, read_results


def test_flatten_keepsfinite_json_numbers_under_slash_paths():
    rec = {"round": 2, "acc": {"source": 0.5, "dusk": float("nan")}, "wall_s": {"train": 1.5}, "ok": True,
           "ids": [1, 2], "name": "x", "big": float("inf")}
    assert flatten(rec) == {"round": 2.0, "acc/source": 0.5, "wall_s/train": 1.5}


def test_nonfinite_json_values_are_written_as_null():
    assert finite_json({"a": [1.0, float("nan")], "b": {"c": float("-inf")}, "d": 3}) == {"a": [1.0, None],
                                                                                   "b": {"c": None}, "d": 3}


def test_logger_appends_rounds_and_truncates_on_resume(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for r in (1, 2, 3):
        log.log({"round": r, "acc": {"overall": r / 10}, "loss": float("nan")})
    log.close()
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2, 3] and json.loads(lines[0])["loss"] is None
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"round": 4, "acc"')  # a line cut short by a kill
    MetricsLogger(tmp_path, tensorboard=False, first_round=3).truncate_after(2)
    assert [r["round"] for r in read_results(tmp_path)] == [1, 2]
    assert read_results(tmp_path / "nowhere") == []


def test_tensorboard_gets_each_scalar_at_its_round(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLogger(tmp_path)
    log.log({"round": 1, "acc": {"overall": 0.25}, "uplink_bytes": 100})
    log.log({"round": 2, "acc": {"overall": 0.5}, "uplink_bytes": 50})
    log.close()
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("acc/overall")] == [(1, 0.25), (2, 0.5)]
    assert "round" not in ea.Tags()["scalars"]
    assert math.isclose(ea.Scalars("uplink_bytes")[1].value, 50)
