"""The round's wall seconds in its record: ``wall_s.round`` from the round's start to this callback (the
devices, the cloud and the callbacks before it, evaluation included), and ``previous_round_callbacks``: the
seconds the callbacks after it (results, checkpoint, console) spent after the previous round's record."""

from __future__ import annotations

import time

from fl_sim.callbacks import Callback, Report


class Stopwatch(Callback):
    def __init__(self):
        self._start: float | None = None
        self._mark: float | None = None  # when the previous round's record left this callback
        self._after: float | None = None

    def on_round_begin(self, strategy, server_round):
        now = time.time()
        self._after = now - self._mark if self._mark is not None else None
        self._start = now

    def after_round(self, strategy, record) -> Report:
        now = time.time()
        wall = {"round": now - self._start}
        if self._after is not None:
            wall["previous_round_callbacks"] = {"after_the_record": self._after}
        self._mark = now
        return Report(wall_s=wall)
