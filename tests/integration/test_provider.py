"""Models from checkpoint directories ([models] in an experiment, fl_sim.models.provider): a fleet whose
teacher and tiers are local directories (one tier derived from a checkpoint), LoRA targets found from the
model for any decoder family, content hashes, and the one-line errors for directories that cannot be run."""

import json
import re
import shutil

import pytest
import torch
from conftest import CDCCA, FEDAVG, tiny_config

from fl_sim import FlSimError
from fl_sim.app.preflight import check_loadable
from fl_sim.models.provider import check_checkpoint, content_hash


@pytest.fixture(scope="module")
def checkpoints(tiny_zoo, tmp_path_factory):
    """The tiny zoo's teacher and one tier copied out of the cache, as a user's checkpoints would be."""
    root = tmp_path_factory.mktemp("checkpoints")
    for role in ("teacher", "tiny-high"):
        shutil.copytree(tiny_zoo.paths[role], root / role)
    return root


def test_a_fleet_of_checkpoint_directories_runs(checkpoints, tmp_path, cache_dir):
    """Two rounds of fedavg: teacher and tier "mine" from directories, tier "small" derived from the teacher
    (int4, one decoder layer dropped); the run records each model's path and content hash."""
    from fl_sim.app.run import run_experiment
    from fl_sim.callbacks.results_file import read_results
    from fl_sim.models.mllm import load_mllm

    cfg = tiny_config(FEDAVG, tmp_path, cache_dir, **{
        "models.teacher": str(checkpoints / "teacher"),
        "models.tiers": {"mine": str(checkpoints / "tiny-high"),
                         "small": {"checkpoint": str(checkpoints / "teacher"), "quantize": "int4", "drop_layers": 1}}})
    run_dir = run_experiment(cfg)
    rows = read_results(run_dir)
    assert [r["round"] for r in rows] == [1, 2]
    assert set(rows[-1]["acc_tier"]) == {"mine", "small"} and rows[-1]["downlink_bytes"] > 0
    models = json.loads((run_dir / "models.json").read_text())
    assert set(models) == {"teacher", "mine", "small"}
    assert models["mine"] == {"path": str((checkpoints / "tiny-high").resolve()),
                              "sha256_16": content_hash(checkpoints / "tiny-high")}
    small = load_mllm(models["small"]["path"])
    assert small.config.text_config.num_hidden_layers == 1
    w = small.model.language_model.layers[0].mlp.fc1.weight
    assert len(torch.unique(w[0, :32])) <= 16  # int4: at most 16 levels per group


def test_a_torchao_tier_holds_real_int8_weights_and_runs_cdcca(checkpoints, tmp_path, cache_dir):
    """A tier derived with backend = "torchao": its language model's linears load as torchao int8 tensors
    holding the simulated tier's int8 values, and two cdcca rounds train and send its adapters."""
    pytest.importorskip("torchao")
    from torchao.quantization import Int8Tensor

    from fl_sim.app.run import run_experiment
    from fl_sim.callbacks.results_file import read_results
    from fl_sim.models.mllm import load_mllm

    spec = {"checkpoint": str(checkpoints / "teacher"), "quantize": "int8"}
    cfg = tiny_config(CDCCA, tmp_path, cache_dir, **{
        "models.tiers": {"sim": spec, "ao": spec | {"backend": "torchao"}}})
    run_dir = run_experiment(cfg)
    rows = read_results(run_dir)
    assert [r["round"] for r in rows] == [1, 2] and set(rows[-1]["acc_tier"]) == {"sim", "ao"}
    assert rows[-1]["downlink_bytes"] > 0
    models = json.loads((run_dir / "models.json").read_text())
    sim, ao = load_mllm(models["sim"]["path"]), load_mllm(models["ao"]["path"])
    w_sim, w_ao = sim.model.language_model.layers[0].mlp.fc1.weight, ao.model.language_model.layers[0].mlp.fc1.weight
    assert isinstance(w_ao, Int8Tensor) and not isinstance(w_sim, Int8Tensor)
    step = w_sim.abs().amax(1, keepdim=True) / 127
    assert ((w_ao.dequantize() - w_sim).abs() <= step).all()  # the same int8 grid, to within one step
    assert not isinstance(ao.model.multi_modal_projector.linear_1.weight, Int8Tensor)  # trained in full
    with pytest.raises(FlSimError, match='backend = "torchao" takes quantize = "int8"'):
        tiny_config(CDCCA, tmp_path, cache_dir, **{"models.tiers": {"ao": spec | {"quantize": "int4",
                                                                              "backend": "torchao"}}})


def test_resuming_with_a_changed_checkpoint_is_refused(checkpoints, tmp_path):
    from fl_sim.models.provider import record

    ck = tmp_path / "ck"
    shutil.copytree(checkpoints / "tiny-high", ck)
    record(tmp_path, {"tier": str(ck)})
    record(tmp_path, {"tier": str(ck)})  # unchanged: fine
    (ck / "config.json").write_text((ck / "config.json").read_text() + " ")
    with pytest.raises(FlSimError, match="the tier checkpoint .* changed since"):
        record(tmp_path, {"tier": str(ck)})


def test_lora_targets_are_the_language_models_linears_of_any_family():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from fl_sim.models.adapters import AdapterConfig, add_adapters, language_model_targets

    m = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=16, patch_size=8),
        text_config=LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2), image_token_index=49))
    pattern = language_model_targets(m)
    hit = {n.rsplit(".", 1)[-1] for n, _ in m.named_modules() if re.fullmatch(pattern, n)}
    assert hit == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    peft = add_adapters(m, AdapterConfig(r=2, alpha=4))
    lora = [n for n, p in peft.named_parameters() if p.requires_grad and "lora_" in n]
    assert lora and not any("vision_tower" in n or "lm_head" in n for n in lora)


def _fake(tmp_path, name, cfg, weights=True):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg) if isinstance(cfg, dict) else cfg)
    if weights:
        (d / "model.safetensors").write_bytes(b"\0")
    return str(d)


def test_directories_that_are_not_runnable_checkpoints(tmp_path, checkpoints, cache_dir):
    llava = json.loads((checkpoints / "tiny-high" / "config.json").read_text())
    cases = [
        (str(tmp_path / "nowhere"), "is not a directory"),
        (str(tmp_path), "no config.json"),
        (_fake(tmp_path, "garbled", "{"), "does not parse"),
        (_fake(tmp_path, "noweights", llava, weights=False), "no .safetensors"),
        (_fake(tmp_path, "text-only", {"model_type": "llama", "vocab_size": 10}), "is not a vision-language model"),
        (_fake(tmp_path, "other-vlm", llava | {"model_type": "paligemma"}), "'paligemma' is not supported"),
        (_fake(tmp_path, "no-image-token", {k: v for k, v in llava.items() if k != "image_token_index"}),
         "names no image token"),
    ]
    for path, message in cases:
        with pytest.raises(FlSimError, match=message) as e:
            check_checkpoint("tiers.mine", path)
        assert str(e.value).startswith(f"models.tiers.mine = {path!r}") and "\n" not in str(e.value)
    other_vocab = _fake(tmp_path, "own-vocab", llava | {"text_config": llava["text_config"] | {"vocab_size": 32000}})
    with pytest.raises(FlSimError, match="vocabulary of 32000 tokens, but the directory has no tokenizer of its own"):
        check_loadable({"teacher": other_vocab}, cache_dir)


def test_bad_model_sections_fail_before_anything_starts(checkpoints, tmp_path, cache_dir):
    from fl_sim.app.preflight import check_run

    cfg = tiny_config(FEDAVG, tmp_path, cache_dir, **{"models.tiers": {
        "small": {"checkpoint": str(checkpoints / "tiny-high"), "drop_layers": 1}}})
    with pytest.raises(FlSimError, match="drop_layers = 1: the checkpoint has only 1 decoder layers"):
        check_run(cfg)
    with pytest.raises(FlSimError, match="fleet.tiers: unknown tier 'tiny-high'; allowed: mine"):
        tiny_config(FEDAVG, tmp_path, cache_dir, **{"models.tiers": {"mine": str(checkpoints / "tiny-high")},
                                                    "fleet.tiers": {"tiny-high": 1.0}})


def test_a_tier_larger_than_the_teacher_is_a_warning(checkpoints, tmp_path, cache_dir, caplog):
    from fl_sim.app.preflight import check_run

    cfg = tiny_config(FEDAVG, tmp_path, cache_dir, **{"models.teacher": str(checkpoints / "tiny-high"),
                                                      "models.tiers": {"big": str(checkpoints / "teacher")}})
    with caplog.at_level("WARNING"):
        check_run(cfg)
    assert "models.tiers.big is larger than the teacher" in caplog.text
