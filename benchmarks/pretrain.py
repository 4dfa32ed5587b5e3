"""Pretraining wall time of a zoo preset from an empty cache, then the cached reload time.

    python benchmarks/pretrain.py [--zoo default] [--cache-dir DIR] [--workers 2] [--domains TOML]

``--domains`` adds an experiment's datasets on disk (as ``fl-sim pretrain --domains``): a zoo of its own, with
stage A+ (the front-end on the user's images) and the teacher on the user domains too. A cache that already
holds other zoos still trains every model of this one (the keys differ); only converted data is reused.
Targets: default preset, with or without one user dataset of ~5,000 questions, <= 30 min on a 2-core CPU;
cached reload <= 10 s.
Run it on an otherwise idle machine: other jobs on the 2 cores inflate the figure.
"""

import argparse
import tempfile
import time

from fl_sim.app.cli import default_workers, quiet_libraries
from fl_sim.models.zoo import pretrain_zoo


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--cache-dir", default=None, help="default: a fresh temporary directory")
    ap.add_argument("--workers", type=int, default=default_workers(), help="training processes (as fl-sim pretrain)")
    ap.add_argument("--domains", default=None, help="an experiment file whose [domains] the zoo also learns")
    args = ap.parse_args()
    quiet_libraries()
    cache = args.cache_dir or tempfile.mkdtemp(prefix="fl-sim-bench-")
    if args.domains:
        from fl_sim.config import load_config
        from fl_sim.world.user_data import build_all, register

        register(load_config(args.domains).domains, cache)
        t0 = time.time()
        build_all()
        print(f"user data converted in {time.time() - t0:.1f} s")
    t0 = time.time()
    zoo = pretrain_zoo(args.zoo, cache_dir=cache, workers=args.workers)
    cold = time.time() - t0
    t0 = time.time()
    pretrain_zoo(args.zoo, cache_dir=cache)
    warm = time.time() - t0
    for role, meta in zoo.meta.items():
        print(f"{role:12s} train {meta.get('train', {}).get('seconds', 0):7.1f} s  params {meta.get('params')}")
        if "train_user" in meta:
            user = meta["train_user"]
            print(f"{'':12s} stage A+ {user['seconds']:7.1f} s on {', '.join(user['domains'])}")
    print(f"pretrain (empty cache, {args.workers} training processes): {cold:.1f} s ({cold / 60:.1f} min)"
          "   target <= 30 min")
    print(f"cached reload:          {warm:.1f} s   target <= 10 s")


if __name__ == "__main__":
    main()
