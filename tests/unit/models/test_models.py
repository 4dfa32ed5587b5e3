import time

import numpy as np
import pytest
import torch

from fl_sim import FlSimError
from fl_sim.models.adapters import adapter_state, add_adapters, load_adapter_state, trainable_parameters
from fl_sim.models.mllm import answer, load_mllm
from fl_sim.models.presets import get_zoo
from fl_sim.models.quantize import quantize_dequantize, quantize_linears
from fl_sim.world.data import generate


def _batch(zoo, n=4, family=None):
    samples = generate("source", "test", 40, seed=0, cell_px=16)
    samples = [s for s in samples if family is None or s["family"] == family][:n]
    b = zoo.prompter.train_batch([s["question"] for s in samples], [s["answer"] for s in samples])
    b["pixel_values"] = zoo.prompter.pixels(np.stack([s["image"] for s in samples]))
    return samples, b


def test_forward_backward_generate(tiny_zoo):
    model = tiny_zoo.tiers["tiny-high"]
    samples, batch = _batch(tiny_zoo)
    out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.lm_head.weight.grad is not None
    model.zero_grad()
    preds = answer(model, tiny_zoo.prompter, np.stack([s["image"] for s in samples]),
                   [s["question"] for s in samples], max_new_tokens=3)
    assert len(preds) == len(samples) and all(isinstance(p, str) for p in preds)


def test_batched_generation_equals_one_by_one(tiny_zoo):
    samples = generate("novel", "test", 12, seed=1, cell_px=16)
    imgs, qs = np.stack([s["image"] for s in samples]), [s["question"] for s in samples]
    together = answer(tiny_zoo.teacher, tiny_zoo.prompter, imgs, qs, max_new_tokens=4)
    alone = [answer(tiny_zoo.teacher, tiny_zoo.prompter, imgs[i:i + 1], qs[i:i + 1], max_new_tokens=4)[0]
             for i in range(len(qs))]
    assert together == alone


def test_teacher_is_bigger_than_every_tier_and_shares_front_end(tiny_zoo):
    t = tiny_zoo.teacher.model.vision_tower.state_dict()
    for m in tiny_zoo.tiers.values():
        assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in tiny_zoo.teacher.parameters())
        for k, v in m.model.vision_tower.state_dict().items():
            assert torch.equal(v, t[k])


@pytest.mark.parametrize("precision,levels,bytes_per", [("int8", 255, 1.0), ("int4", 16, 0.5)])
def test_quantisation_error_bound_and_packed_bytes(precision, levels, bytes_per):
    torch.manual_seed(0)
    w = torch.randn(48, 64)
    deq, nbytes = quantize_dequantize(w, precision, group_size=32)
    if precision == "int8":
        step = w.abs().amax(1, keepdim=True) / 127
        scales = 48
    else:
        step = w.reshape(48, 2, 32).abs().amax(2, keepdim=True).expand(48, 2, 32).reshape(48, 64) / 7
        scales = 48 * 2
    assert ((deq - w).abs() <= step / 2 + 1e-6).all()
    per_row = [len(torch.unique(r)) for r in deq]
    assert max(per_row) <= levels * (2 if precision == "int4" else 1)
    assert nbytes == int(w.numel() * bytes_per) + scales * 2
    bf, bf_bytes = quantize_dequantize(w, "bf16")
    assert bf_bytes == w.numel() * 2 and (bf - w).abs().max() <= w.abs().max() * 2 ** -8
    with pytest.raises(ValueError, match="unknown precision"):
        quantize_dequantize(w, "int3")


def test_quantize_linears_reports_all_layers():
    lin = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 64))
    rep = quantize_linears(lin, "int4", 32)
    assert rep["fp32_linear_bytes"] == 4 * (64 * 32 + 32 * 64)
    assert rep["packed_linear_bytes"] == (64 * 32) // 2 + 32 * 2 * 2 + (32 * 64) // 2 + 64 * 1 * 2
    again = quantize_linears(lin, "int4", 32)  # idempotent: already on the grid
    assert again["max_abs_error"] < 1e-6


def test_tier_weights_are_on_their_quantisation_grid(tiny_zoo):
    low = tiny_zoo.tiers["tiny-low"]
    assert tiny_zoo.meta["tiny-low"]["precision"] == "int4"
    rep = quantize_linears(low.model.language_model, "int4", 32)
    assert rep["max_abs_error"] < 1e-5
    assert tiny_zoo.meta["tiny-low"]["device_bytes"] < tiny_zoo.meta["tiny-low"]["fp32_bytes"] / 2


def test_adapter_state_round_trip_and_only_adapters_train(tiny_zoo, cache_dir):
    base = load_mllm(tiny_zoo.paths["tiny-high"])
    frozen_before = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = add_adapters(base)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "multi_modal_projector" in n for n in names)
    assert not any("vision_tower" in n for n in names)
    _, batch = _batch(tiny_zoo)
    opt = torch.optim.SGD(trainable_parameters(peft_model), lr=0.5)
    peft_model(**batch).loss.backward()
    opt.step()
    state = adapter_state(peft_model)
    assert state and all("lora_" in k or "multi_modal_projector" in k for k in state)
    fresh = add_adapters(load_mllm(tiny_zoo.paths["tiny-high"]))
    load_adapter_state(fresh, state)
    for k, v in adapter_state(fresh).items():
        assert torch.equal(v, state[k])
    with torch.no_grad():
        a = peft_model(**batch).logits
        b = fresh(**batch).logits
    assert torch.allclose(a, b, atol=1e-6)
    merged = peft_model.get_base_model().state_dict()
    lm_key = next(k for k in frozen_before if "language_model" in k and k.endswith("fc1.weight"))
    suffix = lm_key.split("language_model", 1)[1].replace("fc1.weight", "fc1.base_layer.weight")
    peft_key = next(k for k in merged if k.endswith(suffix))
    assert torch.equal(merged[peft_key], frozen_before[lm_key])  # base weights untouched


def test_zoo_is_cached_and_reloads_fast(tiny_zoo, cache_dir):
    from fl_sim.models.zoo import pretrain_zoo

    t0 = time.time()
    again = pretrain_zoo("tiny", cache_dir=cache_dir)
    assert time.time() - t0 < 10
    for k, v in tiny_zoo.teacher.state_dict().items():
        assert torch.equal(v, again.teacher.state_dict()[k])


def test_parallel_pretraining_gives_the_same_models(tiny_zoo, tmp_path):
    """Models trained in 2 spawned processes are byte-identical to the sequential build."""
    from fl_sim.models.zoo import pretrain_zoo

    par = pretrain_zoo("tiny", cache_dir=str(tmp_path), workers=2)
    for role, folder in tiny_zoo.paths.items():
        assert par.paths[role].name == folder.name, role
        assert (par.paths[role] / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes(), role
    with pytest.raises(FlSimError, match="workers"):
        pretrain_zoo("tiny", cache_dir=str(tmp_path), workers=0)


def test_corrupt_model_cache_is_rebuilt(cache_dir, tiny_zoo):
    from fl_sim.models.zoo import pretrain_zoo

    folder = tiny_zoo.paths["tiny-low"]
    # loaded weights may be memory-mapped from the file: snapshot them before corrupting it
    before = {k: v.clone() for k, v in tiny_zoo.tiers["tiny-low"].state_dict().items()}
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    rebuilt = pretrain_zoo("tiny", cache_dir=cache_dir)
    for k, v in before.items():
        assert torch.equal(v, rebuilt.tiers["tiny-low"].state_dict()[k]), k  # deterministic retrain


def test_local_checkpoint_replaces_a_preset(tiny_zoo, cache_dir, tmp_path):
    from fl_sim.models.zoo import pretrain_zoo

    tiny_zoo.tiers["tiny-high"].save_pretrained(tmp_path / "mine")
    z = pretrain_zoo("tiny", cache_dir=cache_dir, overrides={"tiny-low": str(tmp_path / "mine")})
    assert z.meta["tiny-low"]["source"] == str(tmp_path / "mine")
    for k, v in tiny_zoo.tiers["tiny-high"].state_dict().items():
        assert torch.equal(v, z.tiers["tiny-low"].state_dict()[k])
    with pytest.raises(FlSimError, match="no Hugging Face checkpoint"):
        pretrain_zoo("tiny", cache_dir=cache_dir, overrides={"teacher": str(tmp_path / "nothing")})
    with pytest.raises(FlSimError, match="unknown model role 'phone-x'"):
        pretrain_zoo("tiny", cache_dir=cache_dir, overrides={"phone-x": str(tmp_path / "mine")})
    with pytest.raises(FlSimError, match="unknown model zoo preset 'huge'; allowed: default, generalist, tiny"):
        pretrain_zoo("huge", cache_dir=cache_dir)


def test_teacher_domain_weights_set_the_training_mix():
    from fl_sim.models.train import MixedStream

    def share(weights):
        s = MixedStream(["source", "digits"], seed=0, cell_px=8, weights=weights)
        return np.mean([x["domain"] == "digits" for x in s.batch(600)])

    assert abs(share(None) - 0.5) < 0.07
    assert abs(share([1.0, 3.0]) - 0.75) < 0.06
    assert get_zoo("default").teacher.domain_weights  # the default teacher sees more of the hard domains


@pytest.mark.parametrize("kw, message", [
    ({"role": "device", "domain_weights": {"digits": 2.0}}, "teacher only"),
    ({"role": "teacher", "domain_weights": {"mars": 2.0}}, "unknown domain 'mars'"),
    ({"role": "teacher", "domain_weights": {"digits": 0.0}}, "must be > 0"),
])
def test_bad_domain_weights_are_named(kw, message):
    from pydantic import ValidationError

    from fl_sim.models.presets import ModelPreset

    with pytest.raises(ValidationError, match=message):
        ModelPreset(hidden=8, layers=1, heads=1, steps=1, **kw)


def test_token_adapters_learn_word_embeddings_and_round_trip(tiny_zoo):
    from fl_sim.models.adapters import AdapterConfig
    from fl_sim.world.tokenizer import SPECIALS

    cfg = AdapterConfig(r=4, alpha=8, tokens=True)
    base = load_mllm(tiny_zoo.paths["tiny-high"])
    emb_before = base.get_input_embeddings().weight.detach().clone()
    model = add_adapters(base, cfg)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("trainable_tokens_delta" in n for n in names)
    _, batch = _batch(tiny_zoo)
    with torch.no_grad():
        before = model(**batch).logits
    assert torch.allclose(before, load_mllm(tiny_zoo.paths["tiny-high"])(**batch).logits, atol=1e-6)
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.5)
    model(**batch).loss.backward()
    opt.step()
    state = adapter_state(model)
    delta = next(v for k, v in state.items() if "trainable_tokens_delta" in k)
    vocab = model.config.text_config.vocab_size
    assert delta.shape == (vocab - len(SPECIALS), model.config.text_config.hidden_size)
    assert delta.abs().sum() > 0  # the question's words moved
    fresh = add_adapters(load_mllm(tiny_zoo.paths["tiny-high"]), cfg)
    load_adapter_state(fresh, state)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, fresh(**batch).logits, atol=1e-6)
    table = next(v for k, v in model.state_dict().items() if k.endswith("embed_tokens.token_adapter.base_layer.weight"))
    assert torch.equal(table, emb_before)  # the base embedding table itself is untouched


def test_lora_projector_starts_at_the_base_trains_and_sends_fewer_values(tiny_zoo):
    from fl_sim.models.adapters import AdapterConfig

    full = adapter_state(add_adapters(load_mllm(tiny_zoo.paths["tiny-high"]), AdapterConfig(r=4, alpha=8)))
    cfg = AdapterConfig(r=4, alpha=8, projector="lora")
    model = add_adapters(load_mllm(tiny_zoo.paths["tiny-high"]), cfg)
    init = adapter_state(model)
    proj = [k for k in init if "multi_modal_projector" in k]
    assert proj and all("lora_" in k for k in proj)  # no full projector copy
    assert sum(v.numel() for v in init.values()) < sum(v.numel() for v in full.values())
    _, batch = _batch(tiny_zoo)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, load_mllm(tiny_zoo.paths["tiny-high"])(**batch).logits, atol=1e-6)
    # LoRA B starts at zero, so a first step moves only B; a second one moves A too
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    state = adapter_state(model)
    assert all(not torch.equal(state[k], init[k]) for k in proj)
    fresh = add_adapters(load_mllm(tiny_zoo.paths["tiny-high"]), cfg)
    load_adapter_state(fresh, state)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, fresh(**batch).logits, atol=1e-6)
    with pytest.raises(ValueError, match="projector must be"):
        add_adapters(load_mllm(tiny_zoo.paths["tiny-high"]), AdapterConfig(projector="half"))


def test_a_compositional_zoo_trains_its_teacher_on_the_cells_and_its_tiers_on_source(cache_dir, monkeypatch):
    from fl_sim.models import presets
    from fl_sim.models.zoo import pretrain_zoo

    tiny = presets.ZOOS["tiny"]
    fe = tiny.frontend.model_copy(update={"compositional": True, "builtin_share": 0.5})
    teacher = tiny.teacher.model_copy(update={"compositional": True})
    monkeypatch.setitem(presets.ZOOS, "tiny-generalist", tiny.model_copy(update={"frontend": fe, "teacher": teacher}))
    z = pretrain_zoo("tiny-generalist", cache_dir=cache_dir)
    assert z.meta["teacher"]["trained_on"] == ["compositional: 22 cells, not novel+dusk, digits+dusk"]
    assert all(z.meta[t]["trained_on"] == ["source"] for t in tiny.tiers)
    # presets without the compositional fields keep their cache keys
    for preset in (presets.ZOOS["default"].frontend, presets.ZOOS["default"].teacher):
        assert "compositional" not in preset.key() and "builtin_share" not in preset.key()
    assert fe.key()["builtin_share"] == 0.5 and teacher.key()["compositional"] is True


def test_compositional_presets_are_validated():
    from pydantic import ValidationError

    from fl_sim.models.presets import FrontendPreset, ModelPreset

    with pytest.raises(ValidationError, match="compositional applies to the teacher only"):
        ModelPreset(role="device", hidden=8, layers=1, heads=1, steps=1, compositional=True)
    with pytest.raises(ValidationError, match="builtin_share applies to a compositional front-end only"):
        FrontendPreset(hidden=8, layers=1, heads=1, steps=1, builtin_share=0.5)


def test_zoo_checkpoints_read_with_their_own_processor_exactly_as_the_shared_prompter(tiny_zoo, cache_dir):
    """Every zoo directory carries a processor (word_processor), and the fleet's path for checkpoints with
    their own processor reproduces the shared prompter: the same prompt ids, pixels for every byte value,
    trainable word ids and answer decoding."""
    from fl_sim.device import model_cache
    from fl_sim.models.prompts import CheckpointPrompter, has_own_processor

    ref = tiny_zoo.prompter
    questions = [s["question"] for d in ("source", "dusk", "novel", "digits")
                 for s in generate(d, "test", 30, seed=1, cell_px=16)]
    byte_image = np.resize(np.arange(256, dtype=np.uint8), (1, *model_cache.IMAGE_SHAPE))
    identities = set()
    for role, path in tiny_zoo.paths.items():
        if role == "frontend":
            continue
        assert has_own_processor(path), role
        pr = model_cache.prompter_for(str(path), cache_dir)
        assert isinstance(pr, CheckpointPrompter) and pr.n_image == ref.n_image and pr.max_len == ref.max_len
        assert all(pr.prompt(q) == ref.prompt(q) for q in questions), role
        assert torch.equal(pr.pixels(byte_image), ref.pixels(byte_image)), role
        vocab = tiny_zoo.models[role].config.text_config.vocab_size
        assert pr.trainable_token_ids(vocab) == ref.trainable_token_ids(vocab)
        answers = ["two", "red circle", "yes"]
        b, b_ref = pr.train_batch(questions[:3], answers), ref.train_batch(questions[:3], answers)
        assert all(torch.equal(b[k], v) for k, v in b_ref.items())
        identities.add(pr.identity)
    assert len(identities) == 1  # one processor: teacher and tiers share token ids (logit KL stays on)


def test_a_zoo_entry_cached_without_a_processor_gets_one(tiny_zoo, cache_dir):
    from fl_sim.cache import read_meta, seal, verify
    from fl_sim.models.prompts import PROCESSOR_FILES, has_own_processor
    from fl_sim.models.zoo import pretrain_zoo

    folder = tiny_zoo.paths["tiny-high"]
    weights, meta = (folder / "model.safetensors").read_bytes(), read_meta(folder)
    for f in PROCESSOR_FILES:
        (folder / f).unlink(missing_ok=True)
    seal(folder, meta)  # as the cache held it before zoo models carried their processor
    assert not has_own_processor(folder)
    again = pretrain_zoo("tiny", cache_dir=cache_dir)
    assert again.paths["tiny-high"] == folder and has_own_processor(folder) and verify(folder) is None
    assert (folder / "model.safetensors").read_bytes() == weights and read_meta(folder) == meta  # not retrained
