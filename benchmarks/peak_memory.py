"""Peak resident memory of this process and all its children (Ray's workers included), sampled every 0.5 s
in a background thread while a ``with PeakMemory() as mem:`` block runs; ``mem.peak`` is in bytes.
``mem.gpu_peak``: the most GPU memory in use on the machine's GPUs (every process: Ray workers too), in
bytes; 0 without CUDA."""

import threading
import time

import psutil


def gpu_used() -> int:
    """Bytes in use on this machine's CUDA devices now (all processes), 0 without CUDA."""
    import sys

    torch = sys.modules.get("torch")  # never imports torch itself (nor initialises CUDA early)
    try:
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return 0
        return sum(total - free for free, total in map(torch.cuda.mem_get_info, range(torch.cuda.device_count())))
    except AttributeError:  # torch is being imported by the main thread right now
        return 0


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
        self.every_s, self.peak, self.gpu_peak = every_s, 0, 0
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_tree())
            self.gpu_peak = max(self.gpu_peak, gpu_used())
            time.sleep(self.every_s)

    def __enter__(self):
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.peak = max(self.peak, rss_tree())
        self.gpu_peak = max(self.gpu_peak, gpu_used())
