"""A checkpoint of the server state after every round (``fl_sim.callbacks.checkpoint_files``), which ``--resume``
continues."""

from __future__ import annotations

from pathlib import Path

from fl_sim.callbacks import Callback
from fl_sim.callbacks.checkpoint_files import save_checkpoint


class Checkpointing(Callback):
    def __init__(self, run_dir: Path, keep: int = 2):
        self.run_dir, self.keep = Path(run_dir), keep

    def after_round(self, strategy, record):
        r = record.round
        save_checkpoint(self.run_dir, r, strategy.checkpoint_state(), strategy.state, keep=self.keep)
