"""The loop's side of callbacks (fl_sim.server.loop): figures join the record in order, a callback can stop
the run, and the record's timings end where the results are logged. No Flower here."""

from fl_sim.callbacks import Callback, Report
from fl_sim.server.loop import _after_round
from fl_sim.server.round import Absorbed, RoundOutcome, RoundRecord


def _record(cloud_s=None, figures=None) -> RoundRecord:
    outcome = RoundOutcome([1, 2], 1, 1, 0, 10, 20, 3.0, 0.5, 0.25, Absorbed(figures or {}, cloud_s))
    return RoundRecord(4, 12.0, 5, [1, 2, 3], outcome, 100, 200, {"train": 1.0, "aggregate": 0.1})


class Evaluates(Callback):
    timer = "evaluate"

    def after_round(self, strategy, record):
        return Report({"acc": {"source": 0.75}})


class Reads(Callback):
    def __init__(self):
        self.seen = None

    def after_round(self, strategy, record):
        self.seen = dict(record.figures)
        return Report({"seen_acc": record.figures["acc"]["source"]}, stop=record.round >= 4)


class Logs(Callback):
    logs_record = True

    def __init__(self):
        self.logged = None

    def after_round(self, strategy, record):
        self.logged = record.as_dict()


def test_reports_join_the_record_in_order_and_can_stop_the_run():
    reads, logs = Reads(), Logs()
    record = _record()
    stop, after = _after_round(None, [Evaluates(), reads, logs, Callback()], record, t0=0.0)
    assert stop and reads.seen == {"acc": {"source": 0.75}}
    assert logs.logged["acc"] == {"source": 0.75} and logs.logged["seen_acc"] == 0.75
    assert "evaluate" in record.wall_s and "round" in record.wall_s  # timed into the record before it is logged
    assert set(after) == {"Logs", "Callback"}  # the rest go to the next round's record


def test_nothing_stops_a_run_unless_asked():
    stop, _ = _after_round(None, [Evaluates(), Logs()], _record(), t0=0.0)
    assert not stop


def test_the_record_is_one_results_line():
    line = _record(cloud_s=2.5, figures={"uploaded_samples": 7}).as_dict()
    assert line["participants"] == 2 and line["sampled"] == 3 and line["participant_ids"] == [1, 2]
    assert line["cloud_s"] == 2.5 and line["uploaded_samples"] == 7
    assert "cloud_s" not in _record().as_dict()  # a strategy without a cloud logs no cloud time
