"""Pretraining wall time of a zoo preset from an empty cache, then the cached reload time.

    python benchmarks/pretrain.py [--zoo default] [--cache-dir DIR] [--workers 2]

Targets: default preset <= 30 min on a 2-core CPU; cached reload <= 10 s.
Run it on an otherwise idle machine: other jobs on the 2 cores inflate the figure.
"""

import argparse
import tempfile
import time

from fl_sim.cli import default_workers, quiet_libraries
from fl_sim.models.zoo import pretrain_zoo


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--cache-dir", default=None, help="default: a fresh temporary directory")
    ap.add_argument("--workers", type=int, default=default_workers(), help="training processes (as fl-sim pretrain)")
    args = ap.parse_args()
    quiet_libraries()
    cache = args.cache_dir or tempfile.mkdtemp(prefix="fl-sim-bench-")
    t0 = time.time()
    zoo = pretrain_zoo(args.zoo, cache_dir=cache, workers=args.workers)
    cold = time.time() - t0
    t0 = time.time()
    pretrain_zoo(args.zoo, cache_dir=cache)
    warm = time.time() - t0
    for role, meta in zoo.meta.items():
        print(f"{role:12s} train {meta.get('train', {}).get('seconds', 0):7.1f} s  params {meta.get('params')}")
    print(f"pretrain (empty cache, {args.workers} training processes): {cold:.1f} s ({cold / 60:.1f} min)"
          "   target <= 30 min")
    print(f"cached reload:          {warm:.1f} s   target <= 10 s")


if __name__ == "__main__":
    main()
