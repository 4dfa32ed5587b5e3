"""The loop's side of callbacks (fl_sim.server.loop): figures and timings join the record in order, a callback
can stop the run; the stopwatch times the round up to the record. No Flower here."""

import time

from fl_sim.callbacks import Callback, Report
from fl_sim.callbacks.stopwatch import Stopwatch
from fl_sim.server.loop import _after_round
from fl_sim.server.round import Absorbed, RoundOutcome, RoundRecord


def _record(r=4, cloud_s=None, figures=None) -> RoundRecord:
    outcome = RoundOutcome([1, 2], 1, 1, 0, 10, 20, 3.0, 0.5, 0.25, Absorbed(figures or {}, cloud_s))
    return RoundRecord(r, 12.0, 5, [1, 2, 3], outcome, 100, 200, {"train": 1.0, "aggregate": 0.1})


class Evaluates(Callback):
    def after_round(self, strategy, record):
        return Report({"acc": {"source": 0.75}}, wall_s={"evaluate": 0.5})


class Reads(Callback):
    def __init__(self):
        self.seen = None

    def after_round(self, strategy, record):
        self.seen = dict(record.figures)
        return Report({"seen_acc": record.figures["acc"]["source"]}, stop=record.round >= 4)


class Logs(Callback):
    def __init__(self):
        self.logged = None

    def after_round(self, strategy, record):
        self.logged = record.as_dict()


def test_reports_join_the_record_in_order_and_can_stop_the_run():
    reads, logs = Reads(), Logs()
    record = _record()
    assert _after_round(None, [Evaluates(), reads, logs, Callback()], record)
    assert reads.seen == {"acc": {"source": 0.75}}
    assert logs.logged["acc"] == {"source": 0.75} and logs.logged["seen_acc"] == 0.75
    assert logs.logged["wall_s"] == {"train": 1.0, "aggregate": 0.1, "evaluate": 0.5}


def test_nothing_stops_a_run_unless_asked():
    assert not _after_round(None, [Evaluates(), Logs()], _record(r=3))


def test_the_stopwatch_times_the_round_and_the_previous_rounds_callbacks_after_it():
    watch, logs = Stopwatch(), Logs()
    watch.on_round_begin(None, 1)
    first = _record(r=1)
    _after_round(None, [watch, logs], first)
    assert first.wall_s["round"] >= 0 and "previous_round_callbacks" not in first.wall_s
    time.sleep(0.05)  # the callbacks after it, between the two rounds
    watch.on_round_begin(None, 2)
    second = _record(r=2)
    _after_round(None, [watch, logs], second)
    assert second.wall_s["previous_round_callbacks"]["after_the_record"] >= 0.05


def test_the_record_is_one_results_line():
    line = _record(cloud_s=2.5, figures={"uploaded_samples": 7}).as_dict()
    assert line["participants"] == 2 and line["sampled"] == 3 and line["participant_ids"] == [1, 2]
    assert line["cloud_s"] == 2.5 and line["uploaded_samples"] == 7
    assert "cloud_s" not in _record().as_dict()  # a strategy without a cloud logs no cloud time
