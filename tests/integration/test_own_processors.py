"""Checkpoints of other LLaVA families with their own processors (fl_sim/models/prompts.py): tiny random
CLIP+Llama and SigLIP+Qwen2 checkpoints, each with a tokenizer trained here, an image processor and a
chat template (experiments/make_tiny_checkpoints.py), read their own way and run as teacher and tiers of
cdcca and fedavg fleets through `fl-sim run`."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from conftest import CDCCA, FEDAVG, tiny_data

ROOT = Path(__file__).resolve().parents[2]


def _maker():
    script = ROOT / "experiments" / "make_tiny_checkpoints.py"
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoints", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    make = _maker()
    return {"teacher": make.build("clip-llama", root / "clip-llama-teacher", hidden=96, layers=3),
            "clip-llama": make.build("clip-llama", root / "clip-llama-small", hidden=64, layers=2),
            "siglip-qwen2": make.build("siglip-qwen2", root / "siglip-qwen2", hidden=64, layers=2)}


@pytest.mark.parametrize("family, n_tokens", [("clip-llama", 16), ("siglip-qwen2", 4)])
def test_a_checkpoint_reads_with_its_own_processor(families, family, n_tokens):
    """Visual tokens are counted from the tower (CLIP 'default' drops the CLS); the cloud's path from
    visual tokens gives the model's own logits from pixels; labels cover the answer only."""
    from fl_sim.device import model_cache
    from fl_sim.models.mllm import visual_tokens, with_tokens

    path = str(families[family])
    pr, model = model_cache.prompter_for(path, None), model_cache.base_model(path)
    assert pr.n_image == n_tokens and pr.tok.name_or_path.endswith(Path(path).name)
    ids = pr.prompt("how many shapes are there?")
    assert ids.count(pr.image) == n_tokens and pr.tok.convert_ids_to_tokens(ids).count("<unk>") == 0
    images = np.random.default_rng(0).integers(0, 256, (2, *model_cache.IMAGE_SHAPE), dtype=np.uint8)
    px = pr.pixels(images)
    assert px.shape[-2:] == (32, 32)  # the processor resized the fleet's 48-pixel images
    batch = torch.tensor([ids] * 2)
    with torch.no_grad():
        direct = model(input_ids=batch, pixel_values=px).logits
        via_tokens = model(**with_tokens(model, batch, visual_tokens(model, px))).logits
    assert torch.allclose(direct, via_tokens, atol=1e-5)
    b = pr.train_batch(["how many shapes are there?"], ["two"])
    answer = b["input_ids"][0][b["labels"][0] != -100]
    assert pr.decode(answer) == "two" and int(answer[-1]) == pr.eos


def test_lora_finds_each_decoders_linears(families):
    from fl_sim.device import model_cache

    for family in ("clip-llama", "siglip-qwen2"):
        model, init = model_cache.adapted_model(str(families[family]), 4, True, "full")
        names = [k for k in init if "lora_A" in k]
        assert names and all("language_model" in k and "vision_tower" not in k for k in names)
        assert any("q_proj" in k for k in names) and any("down_proj" in k for k in names)


def test_a_student_that_reads_differently_distils_pooled_features(families):
    """Teacher targets turned into a Qwen2 student's own ids and tokens: CE and pooled feature terms, no KL."""
    from fl_sim.config import AKDConfig
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd
    from fl_sim.models.mllm import visual_tokens

    t_path, s_path = str(families["teacher"]), str(families["siglip-qwen2"])
    pr_t, pr_s = model_cache.prompter_for(t_path, None), model_cache.prompter_for(s_path, None)
    teacher = model_cache.base_model(t_path)
    images = np.random.default_rng(1).integers(0, 256, (3, *model_cache.IMAGE_SHAPE), dtype=np.uint8)
    questions = ["is there a red circle?", "how many shapes are there?", "what colour is the square?"]
    t = akd.teacher_targets(teacher, pr_t, visual_tokens(teacher, pr_t.pixels(images)), questions, 4)
    s_model, _ = model_cache.adapted_model(s_path, 4, False, "full")
    st = akd.student_targets(pr_s, visual_tokens(s_model, pr_s.pixels(images)), questions, t,
                             akd.pseudo_labels(t, pr_t))
    assert set(st) == set(akd.POOLED_KEYS) and st["t_pooled"].shape == (3, teacher.config.text_config.hidden_size)
    align = torch.nn.Linear(s_model.config.text_config.hidden_size, teacher.config.text_config.hidden_size)
    out = akd.akd_loss(s_model, align, st, AKDConfig(w_kl=1.0, w_feat=1.0))
    assert "kl" not in out and np.isfinite(out["ce"]) and out["feat"] > 0


@pytest.mark.parametrize("base", [CDCCA, FEDAVG], ids=["cdcca", "fedavg"])
def test_two_families_run_through_fl_sim_run(families, base, tmp_path, cache_dir):
    """Teacher CLIP+Llama; tiers SigLIP+Qwen2 (another tower and tokenizer: its devices upload images) and
    int8 derived from the teacher (its tower: visual tokens); two rounds through the CLI."""
    from fl_sim.app.cli import main
    from fl_sim.callbacks.results_file import read_results

    name = base["strategy"]["name"]
    data = tiny_data(base, cache_dir, tmp_path / "runs") | {"name": "families", "seed": 3}
    data["fleet"] = data["fleet"] | {"num_devices": 4, "tiers": {"qwen": 0.5, "lite": 0.5}}
    data["models"] = {"teacher": str(families["teacher"]),
                      "tiers": {"qwen": str(families["siglip-qwen2"]),
                                "lite": {"checkpoint": str(families["teacher"]), "quantize": "int8"}}}
    (tmp_path / "e.toml").write_text(tomli_w.dumps(data))
    assert main(["run", str(tmp_path / "e.toml"), "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "families" / f"{name}-3"
    rows = read_results(run_dir)
    tiers = {d["tier"] for d in json.loads((run_dir / "fleet.json").read_text())}
    assert tiers == {"qwen", "lite"}
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert set(r["acc_tier"]) == tiers and r["uplink_bytes"] > 0 and r["failed"] == 0
        assert all(0 <= a <= 1 for t in r["acc_tier"].values() for a in t.values())
    assert rows[-1]["downlink_bytes"] > 0  # round 2 sends what round 1 learned
    if name == "cdcca":
        assert all(r["rejected_uploads"] == 0 and r["distilled_samples"] > 0 for r in rows)
        assert sorted(p.name for p in (run_dir / "dwc" / "qwen").iterdir())[:1] == ["p1.safetensors"]
        assert {"akd_ce", "akd_kl", "akd_feat"} <= set(rows[-1])


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_incompatible_processors_are_one_line_errors(families, tmp_path):
    """Before Ray: a template without the image, a processor without an image processor."""
    from fl_sim import FlSimError
    from fl_sim.app.preflight import check_loadable
    from fl_sim.device import model_cache

    no_image = _copy(families["clip-llama"], tmp_path / "no-image")
    cfg = json.loads((no_image / "processor_config.json").read_text())
    (no_image / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'][1]['text'] }}{% endfor %}")
    text_only = _copy(families["siglip-qwen2"], tmp_path / "text-only")
    (text_only / "processor_config.json").unlink()
    assert "image_processor" in cfg and not (text_only / "preprocessor_config.json").exists()
    for path, message in ((no_image, "renders no image in a user turn with an image"),
                          (text_only, "a tokenizer but no image processor")):
        model_cache.prompter_for.cache_clear()
        with pytest.raises(FlSimError) as err:
            check_loadable({"tiers.mine": str(path)}, None)
        text = str(err.value)
        assert "\n" not in text and text.startswith(f"models.tiers.mine = '{path}'") and message in text, text
