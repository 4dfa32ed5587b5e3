"""What building a large fleet's data costs the driver the first time: one train split and its partitions.

    python benchmarks/split_build.py [--samples 200000] [--devices 100000]

In a fresh temporary cache, each step in a fresh process: build one domain's train split of ``--samples``
samples (``load_split``, streamed to disk), then that domain's device partitions for ``--devices`` devices
(``model_cache.device_pools``: the flwr-datasets Dirichlet partitioner over the ``family`` column, the split
built before). Prints each step's time, the growth of its process's peak RSS over the RSS it started
with, and of its anonymous memory (sampled; the RSS also counts the split's memory-mapped file pages,
which the kernel can drop), beside what the capacity check (``fl_sim/app/capacity.py``) counts for it.
A 100,000-device fleet holds two samples per device: 200,000 samples a domain.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

from peak_memory import rss_anon


def _anon() -> int:
    """Anonymous resident bytes of this process (``RssAnon``): what the kernel cannot drop. The split's
    memory-mapped file pages count in the RSS too, but are clean page cache the kernel reclaims under pressure."""
    return rss_anon(os.getpid())


class _AnonPeak(threading.Thread):
    """The peak of ``_anon()``, sampled every 0.1 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.done = _anon(), threading.Event()
        self.start()

    def run(self):
        while not self.done.wait(0.1):
            self.peak = max(self.peak, _anon())

    def stop(self) -> int:
        self.done.set()
        self.join()
        return max(self.peak, _anon())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _step(step: str, samples: int, devices: int, cache: str) -> None:
    from datasets import disable_progress_bars

    from fl_sim.device import model_cache

    disable_progress_bars()
    before, anon_before = _rss(), _anon()
    sampler, t = _AnonPeak(), time.time()
    if step == "split":
        model_cache.split("source", "train", samples, 0, cache)
    else:
        model_cache.device_pools("source", samples, 0, cache, devices, "dirichlet", "family", 0.5)
    seconds, anon = time.time() - t, sampler.stop() - anon_before
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(json.dumps({"s": seconds, "peak_growth": grown, "anon_peak_growth": anon}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--step", choices=["split", "partitions"], help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        return _step(args.step, args.samples, args.devices, args.cache)
    from fl_sim.app import capacity

    counted = {"split": capacity.SPLIT_BUILD_BYTES, "partitions": capacity.PARTITION_BUILD_BYTES * args.devices}
    with tempfile.TemporaryDirectory() as cache:
        for step in ("split", "partitions"):
            out = subprocess.run([sys.executable, __file__, "--step", step, "--samples", str(args.samples),
                                  "--devices", str(args.devices), "--cache", cache],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            what = f"split of {args.samples:,} samples" if step == "split" else \
                f"partitions of {args.samples:,} samples for {args.devices:,} devices"
            print(f"{what}: {r['s']:.0f} s, peak RSS +{r['peak_growth'] / 2**20:,.0f} MiB, peak anonymous memory "
                  f"+{r['anon_peak_growth'] / 2**20:,.0f} MiB (the capacity check counts "
                  f"{counted[step] / 2**20:,.0f} MiB)", flush=True)


if __name__ == "__main__":
    main()
