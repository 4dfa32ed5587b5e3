"""User data: the memory and time of converting a user's dataset, whatever its row count.

Question: a researcher's dataset may hold 100,000 questions about a few thousand images. Does converting it
(``fl_sim.world.user_data.build``: decode, check, resize, split by image, write to the cache) stay within a
bounded memory as the rows grow?

    python -m benchmarks user_data [--rows 1000 10000 100000] [--images 300]

For each row count, an image folder (``metadata.jsonl`` of that many rows over ``--images`` 96x96 PNGs of
their own colours, a question and answer per row) is written to a temporary folder and converted as domain
``bench`` in a fresh process, into a fresh cache. Printed per row count: the conversion's wall time, the
process's peak RSS (with the pages of files it maps: the source and the converted Arrow files, which the
kernel can drop), its peak anonymous memory (``RssAnon``, sampled every 20 ms) over what it held before the
conversion (Python, numpy and ``datasets`` imported), that per 1,000 rows, and the converted rows. Target:
the anonymous peak over the start stays under 400 MiB (the capacity model's ``SPLIT_BUILD_BYTES``) at every
row count.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.lib import REPO, Timer

SMOKE = ["--rows", "200", "2000", "--images", "20"]
BUILD_BOUND_MIB = 400

CHILD = """
import json, resource, sys, threading, time
from fl_sim.quiet import quiet_data
quiet_data()
from fl_sim.cache import read_meta
from fl_sim.config.experiment import UserDomainConfig
from fl_sim.world import user_data

def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0

peak_anon, done = [anon_kib()], threading.Event()
def sample():
    while not done.wait(0.02):
        peak_anon[0] = max(peak_anon[0], anon_kib())
threading.Thread(target=sample, daemon=True).start()
before_anon, before = anon_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
folder = user_data.build("bench", UserDomainConfig(path=sys.argv[1]), 16, sys.argv[2])
done.set()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_anon_kib": before_anon, "peak_anon_kib": max(peak_anon[0], anon_kib()), "peak_kib": peak,
                  "rows": read_meta(folder).get("rows")}))
"""


def add_arguments(ap) -> None:
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 100000], help="rows of each dataset")
    ap.add_argument("--images", type=int, default=300, help="distinct images the rows ask about")


def _dataset(folder: Path, rows: int, images: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    for i in range(images):
        Image.new("RGB", (96, 96), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(folder / f"{i}.png")
    with open(folder / "metadata.jsonl", "w") as f:
        for r in range(rows):
            f.write(json.dumps({"file_name": f"{r % images}.png", "question": f"what colour is shape {r % 7}?",
                                "answer": colours[r % len(colours)]}) + "\n")


def run(args) -> int:
    worst = 0.0
    print(f"{'rows':>8} {'images':>7} {'time (s)':>9} {'peak RSS (MiB)':>15} {'anon. over start':>17} "
          f"{'per 1k rows (MiB)':>18}  converted (train/test)")
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            _dataset(Path(tmp) / "data", rows, args.images)
            with Timer() as t:
                out = subprocess.run([sys.executable, "-c", CHILD, str(Path(tmp) / "data"), str(Path(tmp) / "cache")],
                                     capture_output=True, text=True, cwd=REPO)
            if out.returncode != 0:
                print(f"{rows:>8}: the conversion failed: {out.stderr.strip().splitlines()[-1:]}")
                return 1
            got = json.loads(out.stdout.strip().splitlines()[-1])
            peak, extra = got["peak_kib"] / 1024, (got["peak_anon_kib"] - got["before_anon_kib"]) / 1024
            worst = max(worst, extra)
            counts = got["rows"] or {}
            print(f"{rows:>8} {args.images:>7} {t.s:>9.1f} {peak:>15.0f} {extra:>17.0f} {1000 * extra / rows:>18.2f}"
                  f"  {counts.get('train')}/{counts.get('test')}")
    print(f"\nlargest anonymous peak over the start: {worst:.0f} MiB   target < {BUILD_BOUND_MIB} MiB at every "
          f"row count: {'met' if worst < BUILD_BOUND_MIB else 'MISSED'}")
    return 0
