import json
import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml"


def _cli(*args, cache_dir):
    return subprocess.run([sys.executable, "-m", "fl_sim.cli", *args, "--cache-dir", cache_dir, "--quiet"],
                          capture_output=True, text=True, timeout=600)


def test_unknown_zoo_is_one_line_error(cache_dir):
    r = _cli("pretrain", "--zoo", "huge", cache_dir=cache_dir)
    assert r.returncode == 2
    want = "fl-sim: error: unknown model zoo preset 'huge'; allowed: default, generalist, tiny"
    assert r.stderr.strip().splitlines() == [want]


def test_bad_model_override_is_one_line_error(cache_dir):
    r = _cli("pretrain", "--zoo", "tiny", "--model", "teacher", cache_dir=cache_dir)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "ROLE=PATH" in r.stderr


def test_evaluate_prints_table_and_targets(cache_dir, tiny_zoo, tmp_path):
    out = tmp_path / "eval.json"
    r = _cli("evaluate", "--zoo", "tiny", "--n-test", "24", "--json", str(out), cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr
    assert "exact-match VQA accuracy" in r.stdout and "teacher" in r.stdout
    table = json.loads(out.read_text())["table"]
    assert set(table) == {"teacher", "tiny-high", "tiny-low"}
    assert set(table["teacher"]) == {"source", "dusk", "novel", "digits", "novel+dusk", "digits+dusk"}
    for row in table["teacher"].values():
        assert 0.0 <= row["vqa"] <= 1.0 and "bleu" in row


def test_negative_seeds_are_one_line_errors(cache_dir, tmp_path):
    r = _cli("pretrain", "--zoo", "tiny", "--seed", "-1", cache_dir=cache_dir)
    assert r.returncode == 2
    want = "fl-sim pretrain: error: argument --seed: expected an integer >= 0, got -1"
    assert r.stderr.strip().splitlines()[-1] == want
    r = subprocess.run([sys.executable, "-m", "fl_sim.cli", "run", str(QUICKSTART), "--set", "seed=-1",
                        "--set", f"cache_dir={cache_dir}", "--set", f"output_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2
    want = "fl-sim: error: invalid config: seed: Input should be greater than or equal to 0"
    assert r.stderr.strip().splitlines() == [want]
