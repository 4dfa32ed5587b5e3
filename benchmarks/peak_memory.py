"""Peak resident memory of this process and all its children (Ray's workers included), sampled every 0.5 s
in a background thread while a ``with PeakMemory() as mem:`` block runs; ``mem.peak`` is in bytes, and
``mem.driver_peak`` / ``mem.children_peak`` are the peaks of this process alone and of its descendants alone,
and ``mem.anon_peak`` the peak of their anonymous resident memory (``RssAnon``: what the kernel cannot drop;
the RSS also counts memory-mapped dataset pages, clean page cache the kernel reclaims under pressure).
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


def status_bytes(pid: int, key: str) -> int:
    """A size in ``/proc/PID/status`` (``RssAnon``, ``RssFile``, ...) of process ``pid``, in bytes (0 where
    /proc does not say)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith(f"{key}:")), 0)
    except OSError:
        return 0


def rss_anon(pid: int) -> int:
    """Anonymous resident bytes of process ``pid`` (``RssAnon``)."""
    return status_bytes(pid, "RssAnon")


def rss_split() -> tuple[int, int, int]:
    """Resident bytes of this process, of its descendants together, and anonymous bytes of all of them, now."""
    me = psutil.Process()
    children, anon = 0, rss_anon(me.pid)
    for p in me.children(recursive=True):
        try:
            children += p.memory_info().rss
            anon += rss_anon(p.pid)
        except psutil.Error:
            pass
    return me.memory_info().rss, children, anon


def rss_tree() -> int:
    """Resident bytes of this process and its descendants now."""
    driver, children, _ = rss_split()
    return driver + children


class PeakMemory:
    def __init__(self, every_s: float = 0.5):
        self.every_s, self.peak, self.gpu_peak = every_s, 0, 0
        self.driver_peak = self.children_peak = self.anon_peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        driver, children, anon = rss_split()
        self.peak, self.anon_peak = max(self.peak, driver + children), max(self.anon_peak, anon)
        self.driver_peak, self.children_peak = max(self.driver_peak, driver), max(self.children_peak, children)
        self.gpu_peak = max(self.gpu_peak, gpu_used())

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.every_s)

    def __enter__(self):
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._sample()
