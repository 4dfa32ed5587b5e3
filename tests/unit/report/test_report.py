"""fl_sim.report on a hand-made results set: 2 labels x 2 seeds x 3 rounds, round 3 not evaluated.

Final (round 2) shifted accuracies (mean of dusk, novel) and teacher shifted accuracies:
  source-only seed 0: 0.30, seed 1: 0.30        teacher seed 0: 0.80, seed 1: 0.70
  cdcca       seed 0: 0.60, seed 1: 0.50        -> gap closed 0.3/0.5 = 0.60 and 0.2/0.4 = 0.50
cdcca source accuracy: seed 0 0.70 -> 0.60, seed 1 0.80 -> 0.65  -> forgetting 10 and 15 points.
"""

import json
import logging
import math

import pytest

from fl_sim.report.comparison import RunRef, build_report, human_bytes, load_runs, summarise

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (label, seed) -> (acc round 1, acc round 2, teacher round 2, cum uplink, cum downlink, virtual s, wall_s.round)
RUNS = {
    ("source-only", 0): ({"source": 0.5, "dusk": 0.2, "novel": 0.3}, {"source": 0.5, "dusk": 0.2, "novel": 0.4},
                         {"source": 0.9, "dusk": 0.8, "novel": 0.8}, 1_000_000, 400_000, 20.0, 1.0),
    ("source-only", 1): ({"source": 0.6, "dusk": 0.3, "novel": 0.3}, {"source": 0.6, "dusk": 0.3, "novel": 0.3},
                         {"source": 0.9, "dusk": 0.7, "novel": 0.7}, 1_000_000, 400_000, 20.0, 1.0),
    ("cdcca", 0): ({"source": 0.7, "dusk": 0.4, "novel": 0.4}, {"source": 0.6, "dusk": 0.5, "novel": 0.7},
                   {"source": 0.9, "dusk": 0.8, "novel": 0.8}, 1_500_000, 500_000, 30.0, 2.0),
    ("cdcca", 1): ({"source": 0.8, "dusk": None, "novel": 0.3}, {"source": 0.65, "dusk": 0.5, "novel": 0.5},
                   {"source": 0.9, "dusk": 0.7, "novel": 0.7}, 2_500_000, 500_000, 40.0, 3.0),
}


def _write_run(run_dir, acc1, acc2, teacher, up, down, vt, wall):
    run_dir.mkdir(parents=True)
    recs = []
    for r in (1, 2, 3):
        rec = {"round": r, "cum_uplink_bytes": up * r // 3, "cum_downlink_bytes": down * r // 3,
               "virtual_time_s": vt * r / 3, "wall_s": {"round": wall, "train": wall / 2}, "loss": None}
        if r < 3:  # round 3 is not evaluated: accuracies come from round 2, bytes/times from round 3
            acc = acc1 if r == 1 else acc2
            vals = [v for v in acc.values() if v is not None]
            rec["acc"] = {**acc, "overall": sum(vals) / len(vals)}
            rec["teacher_acc"] = teacher if r == 2 else {k: 0.99 for k in teacher}
        recs.append(rec)
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run_dir / "config.toml").write_text("")


@pytest.fixture
def refs(tmp_path):
    out = []
    for (label, seed), spec in RUNS.items():
        _write_run(tmp_path / "runs" / f"{label}-{seed}", *spec)
        out.append(RunRef(label, seed, tmp_path / "runs" / f"{label}-{seed}"))
    return out


def _row(rows, label):
    (row,) = [r for r in rows if r["label"] == label]
    return row


def test_gap_closed_matches_hand_computation(refs):
    rows = summarise(load_runs(refs))
    assert [r["label"] for r in rows] == ["source-only", "cdcca"]
    gap = _row(rows, "cdcca")["gap_closed"]
    assert gap["mean"] == pytest.approx((0.3 / 0.5 + 0.2 / 0.4) / 2)
    assert gap["std"] == pytest.approx(0.05)
    assert gap["n"] == 2
    base = _row(rows, "source-only")["gap_closed"]
    assert base["mean"] == pytest.approx(0.0) and base["std"] == pytest.approx(0.0)


def test_mean_and_population_std_over_seeds(refs):
    row = _row(summarise(load_runs(refs)), "cdcca")
    assert row["seeds"] == [0, 1]
    assert row["acc_shifted"]["mean"] == pytest.approx(0.55) and row["acc_shifted"]["std"] == pytest.approx(0.05)
    assert row["acc"]["source"]["mean"] == pytest.approx(0.625) and row["acc"]["source"]["std"] == pytest.approx(0.025)
    assert row["teacher_shifted"]["mean"] == pytest.approx(0.75)  # round 2's teacher, not round 1's 0.99
    assert row["uplink_bytes"]["mean"] == pytest.approx(2_000_000)  # last record (round 3)
    assert row["downlink_bytes"]["mean"] == pytest.approx(500_000)
    assert row["virtual_time_s"]["mean"] == pytest.approx(35.0) and row["virtual_time_s"]["std"] == pytest.approx(5.0)
    assert row["wall_s"]["mean"] == pytest.approx(7.5) and row["wall_s"]["std"] == pytest.approx(1.5)


def test_single_seed_has_zero_std(refs):
    row = _row(summarise(load_runs([r for r in refs if r.seed == 0])), "cdcca")
    assert row["acc_shifted"]["mean"] == pytest.approx(0.6) and row["acc_shifted"]["std"] == 0.0
    assert row["gap_closed"]["mean"] == pytest.approx(0.6) and row["gap_closed"]["std"] == 0.0


def test_source_forgetting_in_points(refs):
    rows = summarise(load_runs(refs))
    f = _row(rows, "cdcca")["forgetting_pts"]
    assert f["mean"] == pytest.approx(12.5) and f["std"] == pytest.approx(2.5)
    assert _row(rows, "source-only")["forgetting_pts"]["mean"] == pytest.approx(0.0)


def test_report_tables_links_and_summary_json(refs, tmp_path):
    path = build_report(refs, tmp_path / "rep", title="My grid")
    md = path.read_text()
    assert path == tmp_path / "rep" / "report.md"
    assert md.startswith("# My grid\n")
    assert "4 runs (2 labels x 2 seeds: 0, 1), 3 rounds" in md
    assert ("| cdcca | 2 | 57.5 ± 2.5 | 55.0 ± 5.0 | 75.0 ± 5.0 | 55.0 ± 5.0 | 12.5 ± 2.5 "
            "| 2.0 MB | 500.0 KB | 35.0 ± 5.0 | 7.5 ± 1.5 |") in md
    assert "| source-only | 2 | 38.3 ± 1.7 | 30.0 ± 0.0 | 75.0 ± 5.0 | 0.0 ± 0.0 | 0.0 ± 0.0 | 1.0 MB | 400.0 KB" in md
    assert "| label | source | dusk | novel | overall |" in md
    assert "| cdcca | 62.5 ± 2.5 | 50.0 ± 0.0 | 60.0 ± 10.0 | 57.5 ± 2.5 |" in md
    for name in ("acc_vs_bytes", "acc_vs_virtual_time", "acc_per_domain", "source_forgetting"):
        assert f"![{name}]({name}.png)" in md
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["domains"] == ["source", "dusk", "novel"]
    assert _row(summary["rows"], "cdcca")["gap_closed"]["mean"] == pytest.approx(0.55)


def test_plots_are_valid_pngs(refs, tmp_path):
    build_report(refs, tmp_path / "rep")
    for name in ("acc_vs_bytes.png", "acc_vs_virtual_time.png", "acc_per_domain.png", "source_forgetting.png"):
        data = (tmp_path / "rep" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name


def test_missing_baseline_gives_dash(refs, tmp_path):
    only = [r for r in refs if r.label == "cdcca"]
    row = _row(summarise(load_runs(only)), "cdcca")
    assert math.isnan(row["gap_closed"]["mean"]) and row["gap_closed"]["n"] == 0
    md = build_report(only, tmp_path / "rep").read_text()
    assert "| cdcca | 2 | 57.5 ± 2.5 | 55.0 ± 5.0 | 75.0 ± 5.0 | — | 12.5 ± 2.5 |" in md
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["rows"][0]["gap_closed"]["mean"] is None
    # a baseline for seed 0 only: the gap is over seed 0 alone
    row = _row(summarise(load_runs([r for r in refs if not (r.label == "source-only" and r.seed == 1)])), "cdcca")
    assert row["gap_closed"]["mean"] == pytest.approx(0.6) and row["gap_closed"]["n"] == 1


def test_non_positive_denominator_gives_dash(tmp_path):
    same = {"source": 0.5, "dusk": 0.5, "novel": 0.5}
    _write_run(tmp_path / "b", same, same, same, 1, 1, 1.0, 1.0)
    _write_run(tmp_path / "c", same, same, same, 1, 1, 1.0, 1.0)
    rows = summarise(load_runs([RunRef("source-only", 0, tmp_path / "b"), RunRef("x", 0, tmp_path / "c")]))
    assert math.isnan(_row(rows, "x")["gap_closed"]["mean"])


def test_empty_or_missing_results_are_skipped(refs, tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.jsonl").write_text("")
    extra = [RunRef("broken", 0, tmp_path / "empty"), RunRef("cdcca", 2, tmp_path / "nowhere")]
    with caplog.at_level(logging.WARNING, logger="fl_sim.report"):
        runs = load_runs(refs + extra)
        md = build_report(refs + extra, tmp_path / "rep").read_text()
    assert len(runs) == 4 and {r["label"] for r in runs} == {"source-only", "cdcca"}
    assert "broken" not in md and "4 runs" in md
    assert sum("skipping" in rec.getMessage() for rec in caplog.records) == 4  # 2 refs x (load_runs + build_report)


def test_human_bytes():
    assert human_bytes(999) == "999 B"
    assert human_bytes(1000) == "1.0 KB"
    assert human_bytes(10_625_999) == "10.6 MB"
    assert human_bytes(2.5e9) == "2.5 GB"
    assert human_bytes(math.nan) == "—"


def test_paired_differences_per_seed(refs, tmp_path):
    """cdcca minus source-only shifted accuracy: seed 0 0.60 - 0.30, seed 1 0.50 - 0.30 (points)."""
    row = _row(summarise(load_runs(refs), paired="source-only"), "cdcca")
    assert row["paired_seeds"] == [0, 1]
    assert row["paired_shifted_pts"] == pytest.approx([30.0, 20.0])
    md = build_report(refs, tmp_path / "rep", paired="source-only").read_text()
    assert "## Paired differences vs `source-only`" in md
    assert "| cdcca | 2 | 25.0 ± 5.0 | 0: +30.0, 1: +20.0 | — |" in md
    assert "Paired differences" not in build_report(refs, tmp_path / "rep2").read_text()


def test_a_run_that_kept_other_devices_is_not_paired(refs, tmp_path):
    path = tmp_path / "runs" / "cdcca-1" / "results.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r | {"participant_ids": [0, 1]}) + "\n" for r in recs))
    row = _row(summarise(load_runs(refs), paired="source-only"), "cdcca")
    assert row["paired_seeds"] == [0] and row["unpaired_seeds"] == [1]
    assert row["paired_shifted_pts"] == pytest.approx([30.0])


def test_continual_figures_get_a_table_and_a_plot(refs, tmp_path):
    for ref in refs:  # the final evaluated round (2) holds the run's continual figures
        recs = [json.loads(line) for line in (ref.run_dir / "results.jsonl").read_text().splitlines()]
        recs[1] |= {"acc_seen": 0.5 + 0.1 * ref.seed, "forgetting": 0.1, "bwt": -0.05 if ref.seed else None}
        (ref.run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    row = _row(summarise(load_runs(refs)), "cdcca")
    assert row["acc_seen"]["mean"] == pytest.approx(0.55) and row["bwt"]["n"] == 1
    md = build_report(refs, tmp_path / "rep").read_text()
    assert "| cdcca | 55.0 ± 5.0 | 10.0 ± 0.0 | -5.0 ± 0.0 |" in md
    assert (tmp_path / "rep" / "continual.png").read_bytes().startswith(PNG_MAGIC)
