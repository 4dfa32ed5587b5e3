"""What reading a memory-mapped train split costs a process in resident memory: random rows, as devices draw.

    python benchmarks/mapped_reads.py [--samples 200000 20000] [--rows 4800] [--domain source]

For each split size (a fleet of N devices holds 2N samples a domain), in a fresh process: open the cached
split (``model_cache.split``; built first if missing, a few minutes at 200,000 samples), then read ``--rows``
random rows in batches of 32 (``ds[sorted indices]``, as ``clients.behaviour.DeviceRound`` draws a
device's samples). Prints the growth of the process's file-backed resident memory (``RssFile``: the
split's pages, clean page cache that the kernel shares between processes and drops under pressure) and
of its anonymous memory (``RssAnon``: what it holds). 4,800 rows is what 100 devices of 32 samples read
in 1.5 rounds; each worker reads about that in the scale benchmark's 3 rounds.
"""

import argparse
import json
import os
import subprocess
import sys

from peak_memory import status_bytes


def _status() -> dict[str, int]:
    """``RssAnon`` and ``RssFile`` of this process, in bytes."""
    return {key: status_bytes(os.getpid(), key) for key in ("RssAnon", "RssFile")}


def measure(samples: int, rows: int, domain: str) -> dict:
    import numpy as np

    from fl_sim.device import model_cache

    ds = model_cache.split(domain, "train", samples, 0, None)
    before = _status()
    rng = np.random.default_rng(0)
    for _ in range(rows // 32):
        batch = ds[np.sort(rng.choice(len(ds), 32, replace=False))]
        _ = batch["image"], batch["question"]
    after = _status()
    return {"samples": samples, "rows": rows, "file_mib": (after["RssFile"] - before["RssFile"]) / 2**20,
            "anon_mib": (after["RssAnon"] - before["RssAnon"]) / 2**20,
            "split_mib": sum(os.path.getsize(c["filename"]) for c in ds.cache_files) / 2**20}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, nargs="+", default=[200_000, 20_000])
    ap.add_argument("--rows", type=int, default=4800)
    ap.add_argument("--domain", default="source")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child's own measurement
    args = ap.parse_args()
    if args.one is not None:
        from fl_sim.app.cli import quiet_libraries

        quiet_libraries()
        print(json.dumps(measure(args.one, args.rows, args.domain)))
        return
    print("| split (samples) | on disk (MiB) | rows read | file-backed RSS growth (MiB) | anonymous growth (MiB) |")
    print("|---|---|---|---|---|")
    for n in args.samples:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--rows", str(args.rows),
                              "--domain", args.domain], capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {n:,} | {r['split_mib']:,.0f} | {r['rows']:,} | {r['file_mib']:,.0f} | {r['anon_mib']:,.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
