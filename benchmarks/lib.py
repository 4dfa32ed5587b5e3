"""What the benchmarks share: quiet libraries, timers, peak memory of a process tree, Markdown tables, running
another benchmark in a fresh process, and the plain-loop references (a strategy's device work as plain calls in
this process, without Flower or Ray).

Imports nothing heavy at module level: ``python -m benchmarks`` lists the benchmarks without loading torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]  # the checkout: experiments/, tests/, and where ``-m benchmarks`` runs


def quiet(threads: int | None = None) -> None:
    """Offline, quiet libraries (as the CLI runs them); ``threads``: torch's intra-op threads."""
    from fl_sim.quiet import quiet_libraries

    quiet_libraries()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def run_benchmark(name: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    """``python -m benchmarks NAME ARGV...`` in a fresh process (its own Ray, its own peak memory), from the
    checkout; ``kw`` goes to ``subprocess.run`` (``check=True`` unless given)."""
    kw.setdefault("check", True)
    return subprocess.run([sys.executable, "-m", "benchmarks", name, *argv], cwd=REPO, **kw)


# ------------------------------------------------------------------------------------------------ timing
class Timer:
    """``with Timer() as t: ...``, then ``t.s``: the block's wall seconds (``time.perf_counter``). ``sync``
    (e.g. ``torch.cuda.synchronize``) is called at both ends, so queued GPU work is counted."""

    def __init__(self, sync=None):
        self.sync, self.s = sync or (lambda: None), 0.0

    def __enter__(self):
        self.sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.s = time.perf_counter() - self._t0


# ------------------------------------------------------------------------------------------------ memory
def gib(n: float) -> float:
    return n / 2**30


def gpu_used() -> int:
    """Bytes in use on this machine's CUDA devices now (all processes), 0 without CUDA."""
    torch = sys.modules.get("torch")  # never imports torch itself (nor initialises CUDA early)
    try:
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return 0
        return sum(total - free for free, total in map(torch.cuda.mem_get_info, range(torch.cuda.device_count())))
    except AttributeError:  # torch is being imported by the main thread right now
        return 0


def rss_anon(pid: int) -> int:
    """Anonymous resident bytes of process ``pid`` (``RssAnon`` in ``/proc/PID/status``; 0 where it does not
    say): what the kernel cannot drop, unlike memory-mapped dataset pages."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:")), 0)
    except OSError:
        return 0


def pss(pid: int) -> int:
    """Proportional resident bytes of process ``pid`` (``Pss`` in ``/proc/PID/smaps_rollup``; 0 where it
    does not say): its private pages plus its share of the pages it maps with others, so a sum over
    processes counts a dataset page that ten workers map once, where a sum of RSS counts it ten times."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:")), 0)
    except OSError:
        return 0


def processes() -> list[tuple[str, int, int, int]]:
    """``(name, resident, anonymous, proportional bytes)`` of this process and each of its descendants, now
    (the name: Ray's process title, e.g. ``ray::ClientAppActor``, or the command)."""
    out = []
    for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            cmd = p.cmdline()
            name = ("this process" if p.pid == os.getpid() else cmd[0] if cmd and cmd[0].startswith("ray::")
                    else " ".join(os.path.basename(c) for c in cmd[:2]) if cmd else p.name())
            out.append((name[:40], p.memory_info().rss, rss_anon(p.pid), pss(p.pid)))
        except (psutil.Error, IndexError):
            pass
    return out


def rss_split(procs: list | None = None) -> tuple[int, int, int, int]:
    """Resident bytes of this process, of its descendants together, and anonymous and proportional
    (``pss``) bytes of all of them, now (or of ``processes()`` taken before)."""
    procs = processes() if procs is None else procs
    if not procs:
        return 0, 0, 0, 0
    return (procs[0][1], sum(p[1] for p in procs[1:]), sum(p[2] for p in procs), sum(p[3] for p in procs))


class PeakMemory:
    """Peak resident memory of this process and all its children (Ray's workers included), sampled every
    ``every_s`` seconds in a background thread while a ``with PeakMemory() as mem:`` block runs.

    ``mem.peak``: bytes, the tree's peak; ``mem.driver_peak`` / ``mem.children_peak``: the peaks of this process
    alone and of its descendants alone; ``mem.anon_peak``: the peak of their anonymous resident memory (the RSS
    also counts memory-mapped dataset pages, clean page cache the kernel reclaims under pressure);
    ``mem.pss_peak``: the peak of their proportional memory (``pss``: what the tree holds, shared pages once),
    ``mem.at_pss_peak``: each process's ``(name, rss, anon, pss)`` then;
    ``mem.gpu_peak``: the most GPU memory in use on the machine's GPUs (every process: Ray workers too), 0
    without CUDA."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.peak, self.gpu_peak = every_s, 0, 0
        self.driver_peak = self.children_peak = self.anon_peak = self.pss_peak = 0
        self.at_pss_peak: list = []
        self._stop = threading.Event()

    def _sample(self) -> None:
        procs = processes()
        driver, children, anon, shared = rss_split(procs)
        self.peak, self.anon_peak = max(self.peak, driver + children), max(self.anon_peak, anon)
        if shared > self.pss_peak:
            self.pss_peak, self.at_pss_peak = shared, procs
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


# ------------------------------------------------------------------------------------------------ tables
def table_header(columns: list[str]) -> str:
    """A Markdown table's first two lines."""
    return "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|"


def table_row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(columns: list[str], rows: list[list]) -> str:
    return "\n".join([table_header(columns), *map(table_row, rows)])


# ------------------------------------------------------------------------------------------------ plain loop
def plain_strategy(cfg, run_dir: Path | str | None = None):
    """The strategy of experiment ``cfg`` as a run prepares it (``fl_sim.app.run.prepare_run``: zoo, fleet,
    device environment; no Flower, no Ray), every tier at its initial adapters: the plain-loop references
    run its devices' work in this process. ``run_dir``: where its files go (default: the run's own)."""
    from fl_sim.app.run import prepare_run

    s = prepare_run(cfg, Path(run_dir) if run_dir is not None else None)
    s.state = {t: s.initial_state(t) for t in s.tiers}
    return s


def device_env(s):
    """The devices' environment of strategy ``s`` (what every Flower node is given)."""
    from fl_sim.device.environment import load_device_env

    return load_device_env(s.ctx.env_path)


def plain_device_round(s, env, device_id: int, server_round: int) -> None:
    """Device ``device_id``'s work in ``server_round`` as plain calls: with ``cdcca``, its device round
    (``run_cdcca_round``: answers, uncertainty, UTS, the upload; held = target = version 0, so without the
    downlink); with the other strategies, local training (``run_local_round``) from its tier's adapters."""
    from clients.behaviour import DeviceRound

    p = s.ctx.fleet[device_id]
    dev = DeviceRound(env, device_id, server_round)
    if s.name == "cdcca":
        from clients.cdcca_device import run_cdcca_round

        run_cdcca_round(dev, s.device_settings(p, 1), None)
    else:
        from clients.local_training import run_local_round

        run_local_round(dev, s.device_settings(p, server_round), s.downlink(p.tier))
