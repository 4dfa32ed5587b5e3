import json
import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.toml"


def _cli(*args, cache_dir):
    return subprocess.run([sys.executable, "-m", "fl_sim.app.cli", *args, "--cache-dir", cache_dir, "--quiet"],
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
    r = subprocess.run([sys.executable, "-m", "fl_sim.app.cli", "run", str(QUICKSTART), "--set", "seed=-1",
                        "--set", f"cache_dir={cache_dir}", "--set", f"output_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2
    want = "fl-sim: error: invalid config: seed: Input should be greater than or equal to 0"
    assert r.stderr.strip().splitlines() == [want]


def test_pretraining_progress_is_lines_in_a_log(tmp_path):
    """Out of a terminal, pretraining prints a line per model: its step, loss, elapsed time and time left."""
    import io

    from fl_sim.app.progress_lines import LineProgress

    out = io.StringIO()
    p = LineProgress(every_s=0.0, stream=out)
    task = p.add_task("stage B tiny-high")
    for step in range(1, 5):
        p.update(task, completed=step, total=4, description=f"stage B tiny-high loss {1 / step:.3f}")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("stage B tiny-high loss 0.250: step 4/4, ")
    assert "left" in lines[1] and "elapsed" in lines[0]
    quiet = io.StringIO()
    p = LineProgress(every_s=3600, stream=quiet)
    task = p.add_task("teacher")
    for step in range(1, 11):
        p.update(task, completed=step, total=10)
    assert len(quiet.getvalue().splitlines()) == 2  # the first step and the last
