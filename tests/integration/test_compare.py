"""A tiny two-strategy comparison end to end: ``run_compare`` on tiny presets through Flower's real
``run_simulation``, then the report; a second call skips finished runs; a changed setup is refused."""

import json

import pytest
import tomli_w
from conftest import COMPARE, tiny_data

from fl_sim import FlSimError
from fl_sim.app.compare import load_compare, run_compare
from fl_sim.callbacks.results_file import read_results
from fl_sim.report.comparison import PLOTS


def _write(tmp_path, cache_dir, runs, **extra):
    base = tiny_data(COMPARE, cache_dir, tmp_path / "runs")
    (tmp_path / "base.toml").write_text(tomli_w.dumps(base))
    cmp = {"name": "tinycmp", "base": "base.toml", "seeds": [0], "baseline": "source-only", "runs": runs} | extra
    path = tmp_path / "cmp.toml"
    path.write_text(tomli_w.dumps(cmp))
    return path


def test_two_strategy_compare_end_to_end(tmp_path, cache_dir, tiny_zoo):
    # cdcca replays the participation of source-only (4 devices sampled, the 3 fastest kept)
    path = _write(tmp_path, cache_dir, [{"label": "cdcca", "strategy": "cdcca"},
                                        {"label": "source-only", "strategy": "source-only"}], paired="source-only")
    seen = []
    out = run_compare(path, on_run=lambda i, n, label, seed, state: seen.append((label, seed, state)))
    assert seen == [("source-only", 0, "running"), ("cdcca", 0, "running")]
    for label in ("source-only", "cdcca"):
        res = read_results(out / f"{label}-0")
        assert [r["round"] for r in res] == [1, 2]
    ref, paired = read_results(out / "source-only-0"), read_results(out / "cdcca-0")
    assert ref[-1]["cum_uplink_bytes"] < paired[-1]["cum_uplink_bytes"]
    assert all(r["sampled"] == 4 and r["participants"] == 3 for r in ref)
    assert [r["participant_ids"] for r in paired] == [r["participant_ids"] for r in ref]
    assert str(out / "source-only-0") in (out / "cdcca-0" / "config.toml").read_text()

    summary = json.loads((out / "summary.json").read_text())
    labels = [row["label"] for row in summary["rows"]]
    assert sorted(labels) == ["cdcca", "source-only"]
    report = (out / "report.md").read_text()
    assert "cdcca" in report and "source-only" in report and "## Paired differences vs `source-only`" in report
    assert sorted(p.name for p in out.glob("*.png")) == sorted(PLOTS)
    assert json.loads((out / "compare.json").read_text())["failures"] == []

    # a second call finds both runs complete and only rebuilds the report
    seen.clear()
    before = (out / "cdcca-0" / "results.jsonl").read_text()
    run_compare(path, on_run=lambda i, n, label, seed, state: seen.append((label, seed, state)))
    assert seen == [("source-only", 0, "done"), ("cdcca", 0, "done")]
    assert (out / "cdcca-0" / "results.jsonl").read_text() == before

    # a finished run made with another model (a retrained zoo is another folder) is refused, not reused
    record = out / "source-only-0" / "models.json"
    models = json.loads(record.read_text())
    record.write_text(json.dumps(models | {"teacher": {"path": "/elsewhere/teacher", "sha256_16": "0" * 16}}))
    with pytest.raises(FlSimError, match="source-only-0 ran with another teacher model"):
        run_compare(path)
    record.write_text(json.dumps(models))

    # the same run directory with a different experiment is refused before anything runs
    path = _write(tmp_path, cache_dir, [{"label": "cdcca", "strategy": "cdcca", "set": {"strategy.uts.budget": 0.25}}])
    with pytest.raises(FlSimError, match="different experiment"):
        run_compare(path)


def test_paired_variant_runs_first_and_the_others_replay_it(tmp_path, cache_dir):
    runs = [{"label": "a", "strategy": "cdcca"}, {"label": "b", "strategy": "fedavg"},
            {"label": "ref", "strategy": "cdcca", "set": {"strategy.dwc.select": False}}]
    cmp, grid = load_compare(_write(tmp_path, cache_dir, runs, paired="ref", seeds=[0, 1]))
    assert [(v.label, seed) for v, seed, _ in grid] == [("ref", 0), ("a", 0), ("b", 0), ("ref", 1), ("a", 1), ("b", 1)]
    out = tmp_path / "runs" / "tinycmp"
    assert [c.fleet.replay for _, _, c in grid] == [None, str(out / "ref-0"), str(out / "ref-0"),
                                                    None, str(out / "ref-1"), str(out / "ref-1")]
    with pytest.raises(FlSimError, match="paired = 'nope' is not a run label"):
        load_compare(_write(tmp_path, cache_dir, runs, paired="nope"))


def _same(run_dir, cfg):
    from fl_sim.app.run import check_same_setup

    check_same_setup(run_dir, cfg, "delete it")


def test_a_run_saved_before_an_option_existed_is_the_same_experiment(tmp_path):
    import tomllib

    from fl_sim.config import parse_config, to_toml

    cfg = parse_config({"zoo": "tiny", "strategy": {"name": "cdcca"}})
    saved = tomllib.loads(to_toml(cfg))
    del saved["strategy"]["akd"]["anchor_size"]  # as written before akd.anchor_size existed (default 512)
    (tmp_path / "config.toml").write_text(tomli_w.dumps(saved))
    _same(tmp_path, cfg)
    with pytest.raises(FlSimError, match="differs in strategy.*; delete it"):
        _same(tmp_path, parse_config({"zoo": "tiny", "strategy": {"name": "cdcca", "akd": {"anchor_size": 64}}}))
    saved["strategy"]["gone"] = 1  # an option that no longer exists
    (tmp_path / "config.toml").write_text(tomli_w.dumps(saved))
    with pytest.raises(FlSimError, match="differs in strategy"):
        _same(tmp_path, cfg)


def test_a_run_saved_before_a_default_changed_is_what_it_ran(tmp_path, monkeypatch):
    """``strategy.akd.extra_questions`` became 2 by default after runs were saved without it (they ran with
    0): such a run is the experiment with 0, for the same-setup check and for resuming."""
    import tomllib

    import fl_sim.app.run
    from fl_sim.config import load_config, load_run_config, parse_config, to_toml

    cfg = parse_config({"zoo": "tiny", "strategy": {"name": "cdcca"}})
    assert cfg.strategy.akd.extra_questions == 2
    saved = tomllib.loads(to_toml(cfg))
    del saved["strategy"]["akd"]["extra_questions"]
    (tmp_path / "config.toml").write_text(tomli_w.dumps(saved))
    off = parse_config({"zoo": "tiny", "strategy": {"name": "cdcca", "akd": {"extra_questions": 0}}})
    _same(tmp_path, off)
    with pytest.raises(FlSimError, match="differs in strategy"):
        _same(tmp_path, cfg)
    assert load_run_config(tmp_path / "config.toml").strategy.akd.extra_questions == 0
    assert load_config(tmp_path / "config.toml").strategy.akd.extra_questions == 2  # an experiment file
    resumed = []
    monkeypatch.setattr(fl_sim.app.run, "run_experiment", lambda c, run_dir, **kw: resumed.append(c))
    fl_sim.app.run.resume_experiment(tmp_path, {"rounds": 5})
    assert resumed[0].strategy.akd.extra_questions == 0 and resumed[0].rounds == 5
    (tmp_path / "config.toml").write_text(to_toml(cfg))  # saved with the key: what it says
    assert load_run_config(tmp_path / "config.toml").strategy.akd.extra_questions == 2
    _same(tmp_path, cfg)


def test_sections_a_strategy_does_not_read_do_not_make_another_experiment(tmp_path):
    """fedavg reads no uts/akd/dwc option: a saved fedavg run is the same experiment whatever they say,
    while cdcca, which reads them, is not."""
    from fl_sim.config import parse_config, to_toml

    for name, same in (("fedavg", True), ("cdcca", False)):
        saved = parse_config({"zoo": "tiny", "strategy": {"name": name}})
        (tmp_path / "config.toml").write_text(to_toml(saved))
        other = parse_config({"zoo": "tiny", "strategy": {"name": name, "akd": {"extra_questions": 0},
                                                          "dwc": {"bits": 8}, "uts": {"budget": 0.5}}})
        if same:
            _same(tmp_path, other)
        else:
            with pytest.raises(FlSimError, match="differs in strategy"):
                _same(tmp_path, other)
        with pytest.raises(FlSimError, match="differs in strategy"):  # what fedavg does read still counts
            _same(tmp_path, parse_config({"zoo": "tiny", "strategy": {"name": name, "local_steps": 7}}))
