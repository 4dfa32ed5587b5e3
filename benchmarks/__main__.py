"""The benchmark runner.

    python -m benchmarks                          list the benchmarks (also: --help)
    python -m benchmarks NAME [options]           run one (NAME --help: its options)
    python -m benchmarks NAME --smoke [options]   run it once on the tiny zoo at toy sizes
    python -m benchmarks all --smoke              every benchmark's smoke run in turn, after pretraining the
                                                  tiny zoo (also: --smoke-all); exits 1 if any failed

Models and datasets come from the cache ``$FL_SIM_CACHE`` names (default ``~/.cache/fl-sim``); CI gives it a
fresh folder: ``FL_SIM_CACHE=$(mktemp -d) python -m benchmarks all --smoke``.
"""

import argparse
import subprocess
import sys
import tempfile
import time

from benchmarks import BENCHMARKS, description, load
from benchmarks.lib import REPO, markdown_table, run_benchmark


def listing() -> str:
    width = max(map(len, BENCHMARKS))
    lines = [f"  {name:<{width}}  {description(name)}" for name in BENCHMARKS]
    return "\n".join([__doc__.strip(), "", "benchmarks:", *lines])


def run_one(name: str, argv: list[str]) -> int:
    module = load(name)
    ap = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="once on the tiny zoo at toy sizes; adds: " + " ".join(module.SMOKE))
    module.add_arguments(ap)
    with tempfile.TemporaryDirectory(prefix=f"fl-sim-bench-{name}-") as tmp:
        if "--smoke" in argv:  # the smoke arguments first: any given on the command line win
            smoke = [a.replace("{tmp}", tmp) for a in module.SMOKE]
            print(f"smoke: python -m benchmarks {name} {' '.join([*smoke, *argv])}", flush=True)
            argv = smoke + argv
        return module.run(ap.parse_args(argv)) or 0


def smoke_all() -> int:
    """Pretrain the tiny zoo (its time apart), then every benchmark's smoke run in a fresh process."""
    print("+ fl-sim pretrain --zoo tiny --quiet", flush=True)
    t0 = time.time()
    pre = subprocess.run([sys.executable, "-m", "fl_sim.app.cli", "pretrain", "--zoo", "tiny", "--quiet"], cwd=REPO)
    rows = [["(pretrain tiny zoo)", f"{time.time() - t0:.1f}", "ok" if pre.returncode == 0 else "FAILED"]]
    if pre.returncode == 0:
        for name in BENCHMARKS:
            print(f"\n=== {name} " + "=" * (70 - len(name)), flush=True)
            t0 = time.time()
            rc = run_benchmark(name, "--smoke", check=False).returncode
            rows.append([name, f"{time.time() - t0:.1f}", "ok" if rc == 0 else f"FAILED (exit {rc})"])
    failed = [r[0] for r in rows if r[2] != "ok"]
    total = sum(float(r[1]) for r in rows)
    print("\n" + markdown_table(["benchmark", "smoke wall (s)", "result"], rows))
    ok = sum(r[2] == "ok" for r in rows[1:])
    print(f"smoke runs: {ok} of {len(BENCHMARKS)} ok, {total:.0f} s in all (pretraining included)"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(listing())
        return 0
    if argv[0] == "--smoke-all" or (argv[0] == "all" and argv[1:] == ["--smoke"]):
        return smoke_all()
    if argv[0] == "all":
        print("usage: python -m benchmarks all --smoke   (full runs take hours: run them one by one)", file=sys.stderr)
        return 2
    if argv[0] not in BENCHMARKS:
        print(f"unknown benchmark {argv[0]!r}\n\n{listing()}", file=sys.stderr)
        return 2
    return run_one(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
