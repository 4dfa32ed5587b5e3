"""A user function called with each round's record (``fl_sim.app.run.run_experiment(on_round=...)``)."""

from __future__ import annotations

from fl_sim.callbacks import Callback


class OnRound(Callback):
    def __init__(self, fn):
        self.fn = fn

    def after_round(self, strategy, record):
        self.fn(record.as_dict())
