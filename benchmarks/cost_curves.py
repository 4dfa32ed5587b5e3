"""Cost curves: device-rounds per minute and peak RSS against devices per round and registered devices.

Question: how do throughput and memory grow with the devices sampled per round and with the fleet's size, for
fedavg and cdcca?

    python -m benchmarks cost_curves [--out runs/cost_curves] [--plot docs/cost_curves.png] [--rounds 3]
                                     [--strategies fedavg,cdcca] [--zoo default] [--per-round 10,50,100]
                                     [--registered 1000,10000,100000] [--at-registered 10000] [--at-per-round 100]

Each point is one ``python -m benchmarks scale --no-plain --json`` run in a fresh process (its own Ray, its own
peak-memory watch): 10, 50 and 100 devices per round at 10,000 registered devices, and 1,000, 10,000 and
100,000 registered devices at 100 per round (default zoo, 3 rounds). A point whose JSON is already in
``--out`` is not run again, so an interrupted sweep resumes where it stopped. Prints a Markdown table and
draws the curves (throughput; peak RSS, and dashed its anonymous part: the RSS less memory-mapped dataset
pages) into ``--plot``; the table splits the peak RSS into the driver's and the Ray workers' (each its own
peak) and gives the anonymous peak.
"""

import json
from pathlib import Path

from benchmarks.lib import markdown_table, run_benchmark

SMOKE = ["--zoo", "tiny", "--rounds", "1", "--strategies", "fedavg", "--per-round", "2", "--registered", "4",
         "--at-registered", "4", "--at-per-round", "2", "--out", "{tmp}/points", "--plot", "{tmp}/cost_curves.png"]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def add_arguments(ap) -> None:
    ap.add_argument("--out", default="runs/cost_curves", help="one JSON per point (kept: the sweep resumes)")
    ap.add_argument("--plot", default="docs/cost_curves.png")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--strategies", default="fedavg,cdcca")
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--per-round", type=_ints, default=[10, 50, 100], help="devices per round, at --at-registered")
    ap.add_argument("--registered", type=_ints, default=[1000, 10000, 100000],
                    help="registered devices, at --at-per-round")
    ap.add_argument("--at-registered", type=int, default=10000)
    ap.add_argument("--at-per-round", type=int, default=100)


def points(args) -> list[tuple[int, int]]:
    """``(registered, per round)`` pairs, cheapest first."""
    pts = [(args.at_registered, k) for k in args.per_round] + [(n, args.at_per_round) for n in args.registered]
    return sorted(set(pts))


def run_point(args, out: Path, strategy: str, registered: int, per_round: int) -> dict:
    path = out / f"{strategy}-{registered}-{per_round}.json"
    if not path.exists():
        argv = ["--strategy", strategy, "--devices", str(registered), "--per-round", str(per_round),
                "--rounds", str(args.rounds), "--zoo", args.zoo, "--no-plain", "--json", str(path.resolve())]
        print("+ python -m benchmarks scale", " ".join(argv), flush=True)
        run_benchmark("scale", *argv)
    return json.loads(path.read_text())


def table(rows: list[dict]) -> str:
    columns = ["strategy", "registered", "per round", "device-rounds/min", "peak RSS (GiB)", "driver", "workers",
               "anonymous", "node provisioning (s)", "whole run (s)"]
    return markdown_table(columns, [
        [r["strategy"], f"{r['devices']:,}", r["per_round"], f"{r['device_rounds_per_min']:.0f}",
         f"{r['peak_rss_gib']:.2f}",
         *(f"{r[k]:.2f}" if k in r else "–" for k in ("driver_peak_rss_gib", "workers_peak_rss_gib", "peak_anon_gib")),
         f"{r['map_nodes_s'] or 0:.1f}", f"{r['total_s']:.0f}"] for r in rows])


def plot(args, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import psutil

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey="row")
    for strategy, marker in (("fedavg", "o"), ("cdcca", "s")):
        mine = [r for r in rows if r["strategy"] == strategy]
        by_round = sorted((r for r in mine if r["devices"] == args.at_registered), key=lambda r: r["per_round"])
        by_fleet = sorted((r for r in mine if r["per_round"] == args.at_per_round), key=lambda r: r["devices"])
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
    axes[1, 0].set_xlabel(f"devices per round ({args.at_registered:,} registered)")
    axes[1, 1].set_xlabel(f"registered devices ({args.at_per_round} per round)")
    axes[0, 1].set_xscale("log")
    axes[1, 1].set_xscale("log")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"fl-sim fleet cost on a {psutil.cpu_count()}-core CPU ({args.zoo} zoo, {args.rounds} rounds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_point(args, out, s, n, k) for n, k in points(args) for s in args.strategies.split(",")]
    print(table(rows))
    plot(args, rows, Path(args.plot))
    print(f"plot: {args.plot}")
