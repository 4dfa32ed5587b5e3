"""Model families other than LLaVA (fl_sim/models/families.py): tiny random Idefics3 (SmolVLM), Qwen2-VL,
Gemma 3 and LLaVA-OneVision checkpoints, each saved with its own family's processor
(experiments/make_tiny_checkpoints.py: the ``family_checkpoints`` fixture), read their own way, run from
visual tokens as from pixels, train adapters and label as teachers. tests/integration/test_model_families.py
runs them as a fleet."""

import numpy as np
import pytest
import torch
from conftest import FAMILY_GEOMETRY as GEOMETRY


def _images(n: int, seed: int = 0) -> np.ndarray:
    from fl_sim.device import model_cache

    return np.random.default_rng(seed).integers(0, 256, (n, *model_cache.IMAGE_SHAPE), dtype=np.uint8)


@pytest.mark.parametrize("family", list(GEOMETRY))
def test_a_family_runs_from_visual_tokens_as_from_pixels(family_checkpoints, family):
    """The processor lays out the image its family's way; the cloud's path from (partial) visual tokens
    gives the model's own logits and answers from pixels; labels cover the answer only."""
    from fl_sim.device import model_cache
    from fl_sim.models.mllm import answer, answer_with_stats, visual_tokens, with_pixels, with_tokens

    path = str(family_checkpoints[family])
    pr, model = model_cache.prompter_for(path, None), model_cache.base_model(path)
    assert (pr.n_image, pr.n_visual) == GEOMETRY[family]
    ids = pr.prompt("how many shapes are there?")
    assert ids.count(pr.image) == pr.n_image and "<unk>" not in pr.tok.convert_ids_to_tokens(ids)
    images, questions = _images(2), ["how many shapes are there?", "is there a red circle?"]
    px = pr.pixels(images)
    batch = torch.tensor([ids] * 2)
    with torch.no_grad():
        vis = visual_tokens(model, px)
        direct = model(**with_pixels(model, batch, px)).logits
        via_tokens = model(**with_tokens(model, batch, vis)).logits
        other = model(**with_tokens(model, batch, vis.flip(0))).logits
    assert vis.shape[:2] == (2, pr.n_visual)
    assert torch.allclose(direct, via_tokens, atol=1e-5) and not torch.allclose(direct, other, atol=1e-3)
    preds, stats = answer_with_stats(model, pr, vis, questions, max_new_tokens=3)
    assert preds == answer(model, pr, images, questions, max_new_tokens=3)
    assert ((stats["confidence"] > 0) & (stats["confidence"] <= 1)).all()
    b = pr.train_batch(["how many shapes are there?"], ["two"])
    answer_ids = b["input_ids"][0][b["labels"][0] != -100]
    assert pr.decode(answer_ids) == "two" and int(answer_ids[-1]) == pr.eos


@pytest.mark.parametrize("family", list(GEOMETRY))
def test_a_familys_adapters_train_its_language_model_and_connector(family_checkpoints, family):
    """LoRA on the decoder's linears, the family's connector trained in full (or by LoRA), the adapter
    state's round trip; UTS scores every visual token through the connector (merged tokens share a score)."""
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import uts
    from fl_sim.models.adapters import adapter_state, load_adapter_state
    from fl_sim.models.families import family_of
    from fl_sim.models.mllm import visual_tokens

    path = str(family_checkpoints[family])
    model, init = model_cache.adapted_model(path, 4, True, "full")
    fam = family_of(model)
    lora = [k for k in init if "lora_A" in k]
    assert lora and all(fam.tower not in k.split(".") for k in lora)
    assert any(fam.connector.split(".")[-1] in k and "lora" not in k for k in init)  # the connector in full
    assert any("trainable_tokens" in k for k in init)
    changed = {k: v + 0.01 for k, v in init.items()}
    load_adapter_state(model, changed)
    assert all(torch.equal(adapter_state(model)[k], changed[k]) for k in init)
    load_adapter_state(model, init)
    if family == "gemma3":  # its projector is a weight matrix, no linear layer
        with pytest.raises(ValueError, match="the projector of Gemma3ForConditionalGeneration has no linear"):
            model_cache.adapted_model(path, 4, False, "lora")
    else:
        _, lora_init = model_cache.adapted_model(path, 4, False, "lora")
        assert any(fam.connector.split(".")[-1] in k and "lora_A" in k for k in lora_init)
    pr = model_cache.prompter_for(path, None)
    vis = visual_tokens(model, pr.pixels(_images(2)))
    groups = fam.token_groups(model, pr.n_visual)
    assert groups.shape == (pr.n_visual,) and int(groups.max()) < pr.n_image
    scores = uts.token_uncertainty_mc(lambda x: fam.image_embeds(model, x), vis, 4, 0.5,
                                      torch.Generator().manual_seed(0), groups)
    assert scores.shape == (2, pr.n_visual) and (scores > 0).all()
    assert all(torch.equal(scores[:, groups == g].amin(1), scores[:, groups == g].amax(1)) for g in groups.unique())


@pytest.mark.parametrize("teacher", list(GEOMETRY))
def test_each_family_labels_as_the_teacher_of_another(family_checkpoints, teacher):
    """A family's teacher answers from visual tokens with its logits and hidden states; a student of
    another family (another tokenizer and geometry) distils its pseudo-labels and pooled features."""
    from fl_sim.config import AKDConfig
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd
    from fl_sim.models.mllm import visual_tokens

    student = "clip-llama" if teacher == "idefics3" else "idefics3"
    t_path, s_path = str(family_checkpoints[teacher]), str(family_checkpoints[student])
    pr_t, pr_s = model_cache.prompter_for(t_path, None), model_cache.prompter_for(s_path, None)
    model = model_cache.base_model(t_path)
    images = _images(3, seed=1)
    questions = ["is there a red circle?", "how many shapes are there?", "what colour is the square?"]
    vis = visual_tokens(model, pr_t.pixels(images))
    t = akd.teacher_targets(model, pr_t, vis, questions, 4)
    again = akd.teacher_targets(model, pr_t, vis, questions, 4, states="forward")  # one more pass, from scratch
    assert torch.equal(t["labels"], again["labels"])
    assert torch.allclose(t["t_hidden"].float(), again["t_hidden"].float(), atol=2e-2)  # fp16-stored
    assert torch.allclose(t["t_logits"].float(), again["t_logits"].float(), atol=2e-2)
    width = model.config.get_text_config().hidden_size
    assert t["t_hidden"].shape == (3, pr_t.max_len, width) and t["t_hidden"].abs().sum() > 0
    s_model, _ = model_cache.adapted_model(s_path, 4, False, "full")
    st = akd.student_targets(pr_s, visual_tokens(s_model, pr_s.pixels(images)), questions, t,
                             akd.pseudo_labels(t, pr_t))
    align = torch.nn.Linear(s_model.config.get_text_config().hidden_size, width)
    out = akd.akd_loss(s_model, align, st, AKDConfig(w_kl=1.0, w_feat=1.0))
    assert "kl" not in out and np.isfinite(out["ce"]) and out["feat"] > 0
    out["loss"].backward()




def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_broken_family_checkpoints_are_one_line_errors(family_checkpoints, tmp_path):
    """Before Ray: truncated weights, weights that do not match the config's shapes, a processor whose image
    layout does not match its model, a family fl-sim has no adapter for; each names the role and path."""
    import json

    from fl_sim import FlSimError
    from fl_sim.app.preflight import check_answer_room, check_loadable
    from fl_sim.device import model_cache

    truncated = _copy(family_checkpoints["qwen2-vl"], tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    shapes = _copy(family_checkpoints["gemma3"], tmp_path / "shapes")
    cfg = json.loads((shapes / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] += 32
    (shapes / "config.json").write_text(json.dumps(cfg))
    layout = _copy(family_checkpoints["idefics3"], tmp_path / "layout")
    proc = json.loads((layout / "processor_config.json").read_text())
    proc["image_seq_len"] = 9  # each sub-image laid out as 9 tokens; the model makes 4
    (layout / "processor_config.json").write_text(json.dumps(proc))
    other = _copy(family_checkpoints["idefics3"], tmp_path / "other")
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "paligemma"
    (other / "config.json").write_text(json.dumps(cfg))
    for path, message in ((truncated, "its weights do not load (SafetensorError"),
                          (shapes, "its weights do not load"),
                          (layout, "its processor lays out 45 image tokens for a 48x48 image, its model makes 20"),
                          (other, "model type 'paligemma' is not supported; fl-sim runs gemma3, idefics3")):
        model_cache.base_model.cache_clear()
        model_cache.prompter_for.cache_clear()
        with pytest.raises(FlSimError) as err:
            check_loadable({"tiers.mine": str(path)}, None)
        text = str(err.value)
        assert "\n" not in text and text.startswith(f"models.tiers.mine = '{path}'") and message in text, text
    from fl_sim.config import ModelsConfig
    from fl_sim.models.provider import check_model_dirs

    with pytest.raises(FlSimError, match="model.safetensors is not whole safetensors") as err:  # before torch
        check_model_dirs(ModelsConfig(tiers={"mine": str(truncated)}))
    assert str(err.value).startswith(f"models.tiers.mine = '{truncated}'")
    with pytest.raises(FlSimError, match=r"strategy.akd.max_new_tokens = 500: the teacher .* leaving \d+ for"):
        check_answer_room(str(family_checkpoints["clip-llama"]), 500, None)


def test_the_config_check_lists_every_family_the_adapters_run():
    from fl_sim.models.families import supported
    from fl_sim.models.provider import VLM_TYPES

    assert list(VLM_TYPES) == supported()


@pytest.mark.parametrize("family", list(GEOMETRY))
def test_a_familys_visual_tokens_map_to_image_regions(family_checkpoints, family):
    """Every visual token encodes a region of the image (the family's geometry: patch grids, sub-images and a
    global view, merge blocks, tiles); the tokens a connector merges tile one rectangle; a device uploads the
    pixels of its kept tokens' regions, which the cloud reassembles (the rest at REGION_FILL)."""
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import uts
    from fl_sim.models.families import family_of

    path = str(family_checkpoints[family])
    model, pr = model_cache.base_model(path), model_cache.prompter_for(path, None)
    fam, n = family_of(model), pr.n_visual
    boxes = fam.token_boxes(model, n)
    assert boxes.shape == (n, 4) and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes.max() <= 1
    h, w = model_cache.IMAGE_SHAPE[:2]
    assert uts.region_mask(torch.ones(1, n, dtype=torch.bool), boxes, h, w).all()
    for i in range(n):  # each token's region exactly (every grid here divides the 48 pixels)
        one = torch.zeros(1, n, dtype=torch.bool)
        one[0, i] = True
        area = float((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])) * h * w
        assert uts.region_mask(one, boxes, h, w).sum() == round(area)
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0])
    per = {"idefics3": 16, "llava-onevision": 4}.get(family)
    if per:  # Idefics3: the tiles in row order, then the global view; OneVision: the base view, then the tiles
        first, last = boxes[:per], boxes[-per:]
        view, tile = (last, first) if family == "idefics3" else (first, last)
        assert torch.allclose(view[0, :2], whole[:2]) and torch.allclose(view[-1, 2:], whole[2:])
        assert torch.allclose(tile[-1, 2:], torch.tensor([0.5, 0.5]) if family == "idefics3" else whole[2:])
    groups = fam.token_groups(model, n)
    for g in groups.unique():
        b = boxes[groups == g]
        hull = (b[:, 2].max() - b[:, 0].min()) * (b[:, 3].max() - b[:, 1].min())
        assert torch.isclose(hull, ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sum(), atol=1e-5)
    images = _images(2)
    keep = torch.zeros(2, n, dtype=torch.bool)
    keep[0, :n // 3], keep[1, n // 2:] = True, True
    pixels = uts.region_mask(keep, boxes, h, w)
    up = uts.encode_upload([[1, 2], [3]], images=images, pixel_mask=pixels)
    back = uts.decode_upload(up, n, 8, 10, None, model_cache.IMAGE_SHAPE)
    assert np.array_equal(back["images"][pixels], images[pixels]) and (back["images"][~pixels] == 128).all()
    assert sum(a.nbytes for k, a in up.items() if k.startswith("region")) < images.nbytes
    up["region_pixels"] = up["region_pixels"][:-1]
    with pytest.raises(uts.PayloadError, match="region_pixels hold"):
        uts.decode_upload(up, n, 8, 10, None, model_cache.IMAGE_SHAPE)


def test_a_tier_larger_than_the_teacher_is_warned_of_once(family_checkpoints, caplog):
    """The CLI checks a run and run_experiment checks it again: one warning."""
    import logging

    from fl_sim.config import ModelsConfig
    from fl_sim.models.provider import check_model_dirs

    models = ModelsConfig(teacher=str(family_checkpoints["clip-llama"]),
                          tiers={"big": str(family_checkpoints["idefics3"])})
    with caplog.at_level(logging.WARNING, logger="fl_sim.models.provider"):
        check_model_dirs(models)
        check_model_dirs(models)
    assert [r.getMessage() for r in caplog.records].count(
        "models.tiers.big is larger than the teacher (95936 vs 83200 language-model parameters)") == 1
