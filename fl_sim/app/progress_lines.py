"""Progress as plain lines, for output that is not a terminal (a log file, CI, ``nohup``).

Implements the two methods of ``rich.progress.Progress`` that pretraining calls (``add_task``, ``update``)
and prints, at most every ``every_s`` seconds per task and at its last step, one line: the task, its step,
its description's loss, the time it has run and an estimate of the time left.
"""

from __future__ import annotations

import sys
import time


class LineProgress:
    def __init__(self, every_s: float = 30.0, stream=None):
        self.every_s, self.stream = every_s, stream or sys.stdout
        self.tasks: dict[int, dict] = {}

    def add_task(self, description: str, total=None) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = {"label": description, "description": description, "total": total, "start": time.time(),
                           "printed": 0.0, "first": None}
        return tid

    def update(self, task: int, completed: int | None = None, total=None, description: str | None = None) -> None:
        t, now = self.tasks[task], time.time()
        if total is not None:
            t["total"] = total
        if description is not None:
            t["description"] = description
        if completed is None:
            return
        if t["first"] is None:
            t["first"] = (completed, now)  # the rate counts from the first step seen (after loading)
        last = t["total"] is not None and completed >= t["total"]
        if not last and now - t["printed"] < self.every_s:
            return
        t["printed"] = now
        step0, t0 = t["first"]
        left = ""
        if t["total"] and completed > step0:
            left = f", about {_clock((t['total'] - completed) * (now - t0) / (completed - step0))} left"
        total_s = f"/{t['total']}" if t["total"] else ""
        print(f"{t['description']}: step {completed}{total_s}, {_clock(now - t['start'])} elapsed{left}",
              file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"
