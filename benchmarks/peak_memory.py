"""Peak resident memory of this process and all its children (Ray's workers included), sampled every 0.5 s
in a background thread while a ``with PeakMemory() as mem:`` block runs; ``mem.peak`` is in bytes."""

import threading
import time

import psutil


def rss_tree() -> int:
    """Resident bytes of this process and its descendants now."""
    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakMemory:
    def __init__(self, every_s: float = 0.5):
        self.every_s, self.peak = every_s, 0
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_tree())
            time.sleep(self.every_s)

    def __enter__(self):
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.peak = max(self.peak, rss_tree())
