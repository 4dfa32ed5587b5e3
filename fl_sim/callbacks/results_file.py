"""Per-round metrics: TensorBoard event files and ``results.jsonl`` (one JSON object per round)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def flatten(d: dict, prefix: str = "", sep: str = "/", numbers_only: bool = True) -> dict:
    """``{"acc": {"source": 0.9}}`` -> ``{"acc/source": 0.9}``: nested keys joined by ``sep``; with
    ``numbers_only``, only finite numbers (as floats) are kept."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, key + sep, sep, numbers_only)
        elif not numbers_only:
            out[key] = v
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


class MetricsLogger:
    """Writes each round's record to TensorBoard (scalars, step = round) and appends it to results.jsonl.

    On resume, ``truncate_after(round)`` drops lines past the last checkpoint so no round is doubled.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, first_round: int = 1):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "results.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events of rounds past the checkpoint that an interrupted run had written
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=first_round)

    def truncate_after(self, last_round: int) -> None:
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["round"] <= last_round:
                    keep.append(line)
            except (ValueError, KeyError):  # a line cut short by a kill
                continue
        self.path.write_text("".join(k + "\n" for k in keep))

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(finite_json(record), sort_keys=True, allow_nan=False) + "\n")
        if self.writer is not None:
            step = int(record["round"])
            for k, v in flatten(record).items():
                if k != "round":
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def finite_json(obj):
    """``obj`` with every NaN/inf float (in nested dicts and lists) as ``None``: standard JSON."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_results(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
