"""Startup: time from a fresh ``fl-sim`` process to its one-line error, for each malformed input of the tests.

Question: how long does a user wait to learn that a config, ``--set`` value, fleet trace, run directory or
checkpoint is wrong? Every case of ``tests/bad_inputs.py`` runs through a fresh ``python -m fl_sim.app.cli``
process, as a user meets it.

    python -m benchmarks startup [--cases N]

Prints each case's wall time from process start to exit (the error is its only output), ``ok`` when it exits
with status 2 and one line naming what is wrong (``BAD`` otherwise: the benchmark then exits 1), and the median
and the slowest, over all cases and over the refused datasets (read and checked before torch is imported).
Target: every error in <= 2 s on this machine.
"""

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.lib import REPO, Timer

SMOKE = ["--cases", "8"]


def add_arguments(ap) -> None:
    ap.add_argument("--cases", type=int, default=None,
                    help="N cases spread evenly over the corpus (default: every one)")


def run(args) -> int:
    from tests.bad_inputs import CASES, write_case  # the corpus the tests use (tests/ is importable from REPO)

    cases = CASES[::-(-len(CASES) // args.cases)] if args.cases else CASES
    times, data_times, bad = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            argv = write_case(folder, case)
            with Timer() as t:
                out = subprocess.run([sys.executable, "-m", "fl_sim.app.cli", *argv, "--quiet"], capture_output=True,
                                     text=True, timeout=120, cwd=REPO)
            lines = out.stderr.strip().splitlines()
            ok = out.returncode == 2 and len(lines) == 1 and case[3] in lines[0]
            times.append(t.s)
            if "[domains." in str(case[1].get("e.toml", "")):  # a user dataset: its folder read and checked
                data_times.append(t.s)
            bad += not ok
            print(f"{t.s:5.2f} s  {'ok ' if ok else 'BAD'}  {case[0]}: {lines[-1] if lines else out.stdout[-80:]}")
    print(f"\n{len(times)} inputs: median {statistics.median(times):.2f} s, slowest {max(times):.2f} s"
          f"   target <= 2 s each")
    if data_times:
        print(f"{len(data_times)} refused datasets: median {statistics.median(data_times):.2f} s, "
              f"slowest {max(data_times):.2f} s")
    return 1 if bad else 0
