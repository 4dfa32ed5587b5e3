"""Cost curves: device-rounds per minute and peak RSS against devices per round and registered devices,
for fedavg and cdcca.

    python benchmarks/cost_curves.py [--out runs/cost_curves] [--plot docs/cost_curves.png] [--rounds 3]
                                     [--strategies fedavg,cdcca]

Each point is one ``benchmarks/scale.py --no-plain --json`` run in a fresh process (its own Ray, its own
peak-memory watch): 10, 50 and 100 devices per round at 10,000 registered devices, and 1,000, 10,000 and
100,000 registered devices at 100 per round (default zoo, 3 rounds). A point whose JSON is already in
``--out`` is not run again, so an interrupted sweep resumes where it stopped. Prints a Markdown table and
draws the curves (throughput; peak RSS, and dashed its anonymous part: the RSS less memory-mapped dataset
pages) into ``--plot``; the table splits the peak RSS into the driver's and the Ray workers' (each its own
peak) and gives the anonymous peak.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

PER_ROUND = (10, 50, 100)      # at AT_REGISTERED registered devices
REGISTERED = (1000, 10000, 100000)  # at AT_PER_ROUND devices per round
AT_REGISTERED, AT_PER_ROUND = 10000, 100


def points() -> list[tuple[int, int]]:
    """``(registered, per round)`` pairs, cheapest first."""
    pts = [(AT_REGISTERED, k) for k in PER_ROUND] + [(n, AT_PER_ROUND) for n in REGISTERED]
    return sorted(set(pts), key=lambda p: (p[0], p[1]))


def run_point(out: Path, strategy: str, registered: int, per_round: int, rounds: int) -> dict:
    path = out / f"{strategy}-{registered}-{per_round}.json"
    if not path.exists():
        cmd = [sys.executable, str(Path(__file__).with_name("scale.py")), "--strategy", strategy,
               "--devices", str(registered), "--per-round", str(per_round), "--rounds", str(rounds),
               "--no-plain", "--json", str(path)]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads(path.read_text())


def table(rows: list[dict]) -> str:
    lines = ["| strategy | registered | per round | device-rounds/min | peak RSS (GiB) | driver | workers |"
             " anonymous | node provisioning (s) | whole run (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        split = " | ".join(f"{r[k]:.2f}" if k in r else "–"
                           for k in ("driver_peak_rss_gib", "workers_peak_rss_gib", "peak_anon_gib"))
        lines.append(f"| {r['strategy']} | {r['devices']:,} | {r['per_round']} | {r['device_rounds_per_min']:.0f} | "
                     f"{r['peak_rss_gib']:.2f} | {split} | {r['map_nodes_s'] or 0:.1f} | {r['total_s']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey="row")
    for strategy, marker in (("fedavg", "o"), ("cdcca", "s")):
        mine = [r for r in rows if r["strategy"] == strategy]
        by_round = sorted((r for r in mine if r["devices"] == AT_REGISTERED), key=lambda r: r["per_round"])
        by_fleet = sorted((r for r in mine if r["per_round"] == AT_PER_ROUND), key=lambda r: r["devices"])
        for col, (series, x) in enumerate(((by_round, "per_round"), (by_fleet, "devices"))):
            for row, y in enumerate(("device_rounds_per_min", "peak_rss_gib")):
                line, = axes[row, col].plot([r[x] for r in series], [r[y] for r in series], marker=marker,
                                            label=strategy)
            anon = [r for r in series if "peak_anon_gib" in r]
            if anon:  # what the kernel cannot drop: the RSS less memory-mapped dataset pages
                axes[1, col].plot([r[x] for r in anon], [r["peak_anon_gib"] for r in anon], marker=marker,
                                  linestyle="--", color=line.get_color(), label=f"{strategy}, anonymous")
    axes[0, 0].set_ylabel("device-rounds / min")
    axes[1, 0].set_ylabel("peak RSS, driver + Ray workers (GiB)")
    axes[1, 0].set_xlabel(f"devices per round ({AT_REGISTERED:,} registered)")
    axes[1, 1].set_xlabel(f"registered devices ({AT_PER_ROUND} per round)")
    axes[0, 1].set_xscale("log")
    axes[1, 1].set_xscale("log")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("fl-sim fleet cost on a 2-core CPU (default zoo, 3 rounds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/cost_curves", help="one JSON per point (kept: the sweep resumes)")
    ap.add_argument("--plot", default="docs/cost_curves.png")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--strategies", default="fedavg,cdcca")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_point(out, s, n, k, args.rounds) for n, k in points() for s in args.strategies.split(",")]
    print(table(rows))
    plot(rows, Path(args.plot))
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
