"""Report for ``fl-sim compare``: a grid of strategies x seeds run on the same fleet.

Each run directory holds ``results.jsonl`` (one JSON object per round). Per label (strategy/variant),
aggregated over seeds as mean ± population std (std 0 with one seed):

* final accuracy per domain and overall, and the mean over shifted domains (every domain but "source"),
  from each run's LAST evaluated record (a record with an ``acc`` dict);
* the teacher's mean shifted-domain accuracy (``teacher_acc``), from that same record;
* the share of the teacher-device gap closed on shifted domains, per seed against the baseline run
  (default "source-only") of the same seed: (acc - acc_base) / (teacher - acc_base), the teacher being
  this run's; seeds without a baseline run or with denominator <= 0 are left out, "—" when none is left;
* source-domain forgetting, in points: max source accuracy over evaluated rounds - final source accuracy;
* cumulative uplink / downlink bytes, virtual time and wall time (sum of ``wall_s.round``), from the
  last record.

``build_report`` writes ``report.md`` (summary and per-domain tables, links to the plots), ``summary.json``
(the rows, NaN -> null) and four PNGs: shifted accuracy vs total bytes and vs virtual time, accuracy per
domain over rounds, and source accuracy over rounds (curves averaged over seeds by round number).
Missing values (null/NaN) are skipped everywhere.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from fl_sim.callbacks.results_file import finite_json
from fl_sim.report.table import human_bytes

log = logging.getLogger(__name__)
DASH = "—"
PLOTS = ("acc_vs_bytes.png", "acc_vs_virtual_time.png", "acc_per_domain.png", "source_forgetting.png",
         "continual.png")
CONTINUAL = ("acc_seen", "forgetting", "bwt")  # fl_sim.callbacks.continual's figures, per evaluated round


@dataclass
class RunRef:
    label: str
    seed: int
    run_dir: Path


def _num(v) -> float:
    """A finite float, else NaN (None, missing, inf, non-numbers)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def _mean(xs) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _stats(xs) -> dict:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    m = sum(xs) / len(xs)
    return {"mean": m, "std": math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)), "n": len(xs)}


def load_runs(refs: list[RunRef]) -> list[dict]:
    """Read each ref's results.jsonl; skip (with a warning) refs whose file is missing, empty or unreadable."""
    runs = []
    for ref in refs:
        path = Path(ref.run_dir) / "results.jsonl"
        if not path.is_file():
            log.warning("skipping %s (seed %s): no %s", ref.label, ref.seed, path)
            continue
        rounds = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rounds.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: not JSON, line skipped", path, i)
        if not rounds:
            log.warning("skipping %s (seed %s): %s is empty", ref.label, ref.seed, path)
            continue
        runs.append({"label": ref.label, "seed": int(ref.seed), "rounds": rounds})
    return runs


def _evaluated(run) -> list[dict]:
    return [r for r in run["rounds"] if isinstance(r.get("acc"), dict)]


def _domains(runs) -> list[str]:
    names = {d for run in runs for r in _evaluated(run) for d in r["acc"] if d != "overall"}
    return sorted(names, key=lambda d: (d != "source", d))


def _shifted(d: dict | None, domains) -> float:
    d = d if isinstance(d, dict) else {}
    return _mean(_num(d.get(x)) for x in domains if x != "source")


def _run_stats(run, domains) -> dict:
    ev, last = _evaluated(run), run["rounds"][-1]
    final = ev[-1] if ev else {}
    acc = final.get("acc") or {}
    src = [_num(r["acc"].get("source")) for r in ev]
    src = [x for x in src if not math.isnan(x)]
    wall = sum(x for x in (_num((r.get("wall_s") or {}).get("round")) for r in run["rounds"]) if not math.isnan(x))
    return {
        "acc": {d: _num(acc.get(d)) for d in [*domains, "overall"]},
        "acc_shifted": _shifted(acc, domains),
        "teacher_shifted": _shifted(final.get("teacher_acc"), domains),
        "forgetting_pts": 100 * (max(src) - src[-1]) if src and not math.isnan(_num(acc.get("source"))) else math.nan,
        "uplink_bytes": _num(last.get("cum_uplink_bytes")),
        "downlink_bytes": _num(last.get("cum_downlink_bytes")),
        "virtual_time_s": _num(last.get("virtual_time_s")),
        "wall_s": wall,
        "rounds": len(run["rounds"]),
    } | {f"cl_{k}": _num(final.get(k)) for k in CONTINUAL}


def summarise(runs, baseline: str = "source-only", paired: str | None = None) -> list[dict]:
    """One row per label (first-seen order); each metric is {"mean", "std", "n"} over seeds.

    With ``paired`` (a label), ``paired_shifted_pts`` is the per-seed difference in shifted accuracy
    (points) to that label's run of the same seed, over ``paired_seeds``: the seeds whose run kept the
    same devices every round as the paired run (``unpaired_seeds``: the others, e.g. a stale replay).
    """
    domains = _domains(runs)
    per = [(run, _run_stats(run, domains)) for run in runs]
    base, ref, ref_run = {}, {}, {}
    for run, st in per:
        if run["label"] == baseline:
            base.setdefault(run["seed"], st)
        if run["label"] == paired:
            ref.setdefault(run["seed"], st)
            ref_run.setdefault(run["seed"], run)
    rows = []
    for label in dict.fromkeys(run["label"] for run in runs):
        mine = [(run, st) for run, st in per if run["label"] == label]
        gaps = []
        for run, st in mine:
            b = base.get(run["seed"])
            den = st["teacher_shifted"] - b["acc_shifted"] if b else math.nan
            gaps.append((st["acc_shifted"] - b["acc_shifted"]) / den if b and den > 0 else math.nan)
        col = lambda k: _stats(st[k] for _, st in mine)  # noqa: E731, B023 - used at once
        rows.append({
            "label": label,
            "seeds": [run["seed"] for run, _ in mine],
            "rounds": max(st["rounds"] for _, st in mine),
            "acc": {d: _stats(st["acc"][d] for _, st in mine) for d in [*domains, "overall"]},
            "acc_shifted": col("acc_shifted"),
            "teacher_shifted": col("teacher_shifted"),
            "gap_closed": _stats(gaps),
            "forgetting_pts": col("forgetting_pts"),
            **{k: col(k) for k in ("uplink_bytes", "downlink_bytes", "virtual_time_s", "wall_s")},
            **{k: col(f"cl_{k}") for k in CONTINUAL},
        })
        if paired is not None:
            same = [(run["seed"], st) for run, st in mine if run["seed"] in ref
                    and _participation(run) == _participation(ref_run[run["seed"]])]
            rows[-1]["paired_seeds"] = [seed for seed, _ in same]
            rows[-1]["paired_shifted_pts"] = [100 * (st["acc_shifted"] - ref[seed]["acc_shifted"]) for seed, st in same]
            rows[-1]["unpaired_seeds"] = [run["seed"] for run, _ in mine if run["seed"] not in rows[-1]["paired_seeds"]]
    return rows


def _participation(run) -> list:
    """The devices a run kept, round by round (what a paired run must share with its reference)."""
    return [r.get("participant_ids") for r in run["rounds"]]


def _pm(s: dict, scale: float = 1.0) -> str:
    return DASH if math.isnan(s["mean"]) else f"{scale * s['mean']:.1f} ± {scale * s['std']:.1f}"



def _curve(runs, label, y, x=lambda r: _num(r.get("round"))):
    """Points (x, y) of a label, averaged over seeds per round number; NaNs skipped."""
    by_round: dict[int, list] = {}
    for run in (r for r in runs if r["label"] == label):
        for r in _evaluated(run):
            by_round.setdefault(r.get("round"), []).append((x(r), y(r)))
    pts = [(_mean(a for a, _ in v), _mean(b for _, b in v))
           for k, v in sorted(by_round.items(), key=lambda kv: kv[0] or 0)]
    return [p for p in pts if not (math.isnan(p[0]) or math.isnan(p[1]))]


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot(runs, domains, out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["label"] for r in runs))
    shifted = lambda r: _shifted(r["acc"], domains)  # noqa: E731
    total = lambda r: _num(r.get("cum_uplink_bytes")) + _num(r.get("cum_downlink_bytes"))  # noqa: E731

    def lines(ax, y, x=None, xlabel="round", ylabel="accuracy", title=""):
        for lab in labels:
            pts = _curve(runs, lab, y, x) if x else _curve(runs, lab, y)
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=lab)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)

    specs = [("acc_vs_bytes.png", shifted, total, "cumulative bytes (uplink + downlink)",
              "shifted-domain accuracy vs bytes"),
             ("acc_vs_virtual_time.png", shifted, lambda r: _num(r.get("virtual_time_s")), "virtual time (s)",
              "shifted-domain accuracy vs virtual time")]
    for name, y, x, xlabel, title in specs:
        fig, ax = plt.subplots(figsize=(6, 4))
        lines(ax, y, x, xlabel, "mean shifted-domain accuracy", title)
        if name == "acc_vs_bytes.png" and ax.has_data():
            ax.set_xscale("log")
        _save(plt, fig, out_dir / name)
    fig, axes = plt.subplots(1, max(len(domains), 1), figsize=(4 * max(len(domains), 1), 3.5), squeeze=False)
    for ax, d in zip(axes[0], domains):
        lines(ax, lambda r, d=d: _num(r["acc"].get(d)), title=f"accuracy: {d}")
    _save(plt, fig, out_dir / "acc_per_domain.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    lines(ax, lambda r: _num(r["acc"].get("source")), ylabel="source accuracy",
          title="source-domain accuracy (forgetting)")
    _save(plt, fig, out_dir / "source_forgetting.png")
    fig, axes = plt.subplots(1, len(CONTINUAL), figsize=(4 * len(CONTINUAL), 3.5), squeeze=False)
    for ax, key in zip(axes[0], CONTINUAL):
        lines(ax, lambda r, key=key: _num(r.get(key)), ylabel=key, title=f"continual: {key}")
    _save(plt, fig, out_dir / "continual.png")


def build_report(refs: list[RunRef], out_dir: Path, title: str = "Strategy comparison",
                 baseline: str = "source-only", paired: str | None = None) -> Path:
    """Write out_dir/report.md, summary.json and the PNG plots; return the path of report.md.

    ``paired``: the label whose participation the others replayed; adds the paired differences."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(refs)
    rows = summarise(runs, baseline, paired)
    domains = _domains(runs)
    summary = finite_json({"baseline": baseline, "domains": domains, "rows": rows})
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    n_rounds = sorted({len(r["rounds"]) for r in runs}) or [0]
    rounds = str(n_rounds[0]) if len(n_rounds) == 1 else f"{n_rounds[0]}–{n_rounds[-1]}"
    seeds = sorted({r["seed"] for r in runs})
    md = [f"# {title}", "",
          f"{len(runs)} runs ({len(rows)} labels x {len(seeds)} seeds: {', '.join(map(str, seeds)) or DASH}), "
          f"{rounds} rounds; "
          f"mean ± std over seeds; gap closed vs `{baseline}` on shifted domains "
          f"({', '.join(d for d in domains if d != 'source')}).",
          "", "| label | seeds | overall acc (%) | shifted acc (%) | teacher shifted (%) | gap closed (%) "
          "| source forgetting (pts) | uplink | downlink | virtual time (s) | wall time (s) |", "|" + "---|" * 11]
    for r in rows:
        md.append(f"| {r['label']} | {len(r['seeds'])} | {_pm(r['acc']['overall'], 100)} "
                  f"| {_pm(r['acc_shifted'], 100)} "
                  f"| {_pm(r['teacher_shifted'], 100)} | {_pm(r['gap_closed'], 100)} | {_pm(r['forgetting_pts'])} "
                  f"| {human_bytes(r['uplink_bytes']['mean'])} | {human_bytes(r['downlink_bytes']['mean'])} "
                  f"| {_pm(r['virtual_time_s'])} | {_pm(r['wall_s'])} |")
    md += ["", "## Final accuracy per domain (%)", "", "| label | " + " | ".join([*domains, "overall"]) + " |",
           "|" + "---|" * (len(domains) + 2)]
    md += [f"| {r['label']} | " + " | ".join(_pm(r["acc"][d], 100) for d in [*domains, "overall"]) + " |" for r in rows]
    md += ["", "## Continual learning (final evaluated round)", "",
           "Over the domains each tier has met: accuracy, forgetting (the drop from each domain's best accuracy), "
           "and backward transfer on the domains left behind (`fl_sim/callbacks/continual.py`); in points.", "",
           "| label | seen-domain acc | forgetting | backward transfer |", "|---|---|---|---|"]
    md += [f"| {r['label']} | " + " | ".join(_pm(r[k], 100) for k in CONTINUAL) + " |" for r in rows]
    if paired is not None:
        md += ["", f"## Paired differences vs `{paired}`", "",
               f"Runs that kept the same devices every round as `{paired}` of their seed (they replayed its "
               "participation), so per-seed differences are the methods'. Shifted accuracy minus the paired run's, "
               "in points; seeds whose participation differs (a stale replay, a failed device) are listed apart.", "",
               "| label | seeds | mean ± std (pts) | per seed | not paired |", "|---|---|---|---|---|"]
        md += [f"| {r['label']} | {len(r['paired_seeds'])} | {_pm(_stats(r['paired_shifted_pts']))} | "
               + (", ".join(f"{s}: {d:+.1f}" if not math.isnan(d) else f"{s}: {DASH}"
                            for s, d in zip(r["paired_seeds"], r["paired_shifted_pts"])) or DASH)
               + f" | {', '.join(map(str, r['unpaired_seeds'])) or DASH} |"
               for r in rows if r["label"] != paired]
    md += ["", "## Plots", ""]
    if runs:
        _plot(runs, domains, out_dir)
        md += [line for p in PLOTS for line in (f"![{p[:-4]}]({p})", "")]
    else:
        md.append("no runs with results")
    path = out_dir / "report.md"
    path.write_text("\n".join(md).rstrip() + "\n")
    return path
