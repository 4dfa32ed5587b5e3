"""Every malformed input of ``tests/bad_inputs.py`` ends in one line naming what is wrong, exit code 2,
before anything runs: no run directory is made, and (checked in a fresh process) neither torch nor
Flower is imported. The time to each error is a benchmark figure: ``python -m benchmarks startup``."""

import subprocess
import sys

import pytest
from bad_inputs import CASES, write_case

from fl_sim.app.cli import main


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_malformed_input_is_one_line_naming_it(case, tmp_path, capsys, cache_dir):
    argv = write_case(tmp_path, case)
    if argv[0] in ("pretrain", "evaluate"):
        argv += ["--cache-dir", cache_dir]
    rc = main(argv + ["--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("fl-sim: error: "), err
    assert case[3] in err[0], err[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_errors_come_before_the_heavy_libraries(tmp_path):
    code = ("import sys; from fl_sim.app.cli import main; rc = main(sys.argv[1:]); "
            "heavy = [m for m in ('torch', 'transformers', 'flwr', 'ray') if m in sys.modules]; "
            "print(rc, heavy)")
    for name in ("unknown key", "a trillion devices", "a CSV trace missing a column"):
        case = next(c for c in CASES if c[0] == name)
        argv = write_case(tmp_path / name.replace(" ", "-"), case)
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert out.stdout.split() == ["2", "[]"], (name, out.stdout, out.stderr)


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path, monkeypatch):
    from fl_sim import FlSimError
    from fl_sim.config import load_config

    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "e.toml").write_text('zoo = "tiny"\n[fleet]\ntrace = "traces/t.csv"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config("exp/e.toml")
    assert cfg.fleet.trace == str(tmp_path / "exp" / "traces" / "t.csv")
    from fl_sim.app.preflight import check_run

    with pytest.raises(FlSimError, match=str(tmp_path / "exp" / "traces" / "t.csv")):
        check_run(cfg)
    assert load_config("exp/e.toml", {"fleet.trace": "t.csv"}).fleet.trace == "t.csv"  # the shell's folder
