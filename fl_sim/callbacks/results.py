"""Each round's record to ``results.jsonl`` and TensorBoard (``fl_sim.callbacks.results_file.MetricsLogger``)."""

from __future__ import annotations

from pathlib import Path

from fl_sim.callbacks import Callback
from fl_sim.callbacks.results_file import MetricsLogger


class ResultsLogger(Callback):
    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.run_dir, self.tensorboard = Path(run_dir), tensorboard
        self.logger: MetricsLogger | None = None

    def on_run_begin(self, strategy, first_round):
        self.logger = MetricsLogger(self.run_dir, tensorboard=self.tensorboard, first_round=first_round)
        self.logger.truncate_after(first_round - 1)  # lines of rounds past the checkpoint an interrupted run wrote

    def after_round(self, strategy, record):
        self.logger.log(record.as_dict())

    def on_run_end(self, strategy, completed):
        if self.logger is not None:
            self.logger.close()
