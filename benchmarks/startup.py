"""Time to the first error line: every malformed input of ``tests/bad_inputs.py`` through a fresh
``fl-sim`` process, as a user meets it.

    python benchmarks/cli_startup.py

Prints each case's wall time from process start to exit (the error is its only output), and the
median and the slowest. Target: every error in <= 2 s on this machine.
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bad_inputs import CASES, write_case  # noqa: E402


def main() -> None:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            argv = write_case(folder, case)
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "fl_sim.app.cli", *argv, "--quiet"], capture_output=True,
                                 text=True, timeout=120)
            dt = time.perf_counter() - t0
            lines = out.stderr.strip().splitlines()
            ok = out.returncode == 2 and len(lines) == 1 and case[3] in lines[0]
            times.append(dt)
            print(f"{dt:5.2f} s  {'ok ' if ok else 'BAD'}  {case[0]}: {lines[-1] if lines else out.stdout[-80:]}")
    print(f"\n{len(times)} inputs: median {statistics.median(times):.2f} s, slowest {max(times):.2f} s"
          f"   target <= 2 s each")


if __name__ == "__main__":
    main()
