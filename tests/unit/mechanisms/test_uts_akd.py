"""UTS and AKD as pure tensor functions (no Flower), on the tiny zoo."""

import numpy as np
import pytest
import torch

from fl_sim import FlSimError
from fl_sim.mechanisms import akd, uts
from fl_sim.mechanisms.replay import ReplayBuffer
from fl_sim.models.mllm import answer, answer_with_stats, visual_tokens, with_tokens


@pytest.fixture(scope="module")
def world(tiny_zoo, cache_dir):
    from fl_sim.device import model_cache

    ds = model_cache.split("dusk", "train", 48, 0, cache_dir)
    model, init = model_cache.adapted_model(str(tiny_zoo.paths["tiny-high"]), 4)
    return tiny_zoo, ds, model, init


def test_select_samples_respects_budget_order_and_threshold():
    u = np.array([0.1, 0.9, 0.5, 0.9, 0.3, 0.7])
    assert uts.select_samples(u, 0.5).tolist() == [1, 3, 5]        # 3 most uncertain, ties by index
    assert uts.select_samples(u, 0.34).tolist() == [1, 3, 5]       # ceil(0.34 * 6) = 3
    assert uts.select_samples(u, 1 / 6).tolist() == [1]
    assert uts.select_samples(u, 1.0, min_uncertainty=0.6).tolist() == [1, 3, 5]
    assert uts.select_samples(u, 0.5, min_uncertainty=0.8).tolist() == [1, 3]
    # the budget is ceil of the exact product: 0.07 * 100 and 0.14 * 50 are 7 in floats plus an ulp
    assert len(uts.select_samples(np.arange(100.0), 0.07)) == 7
    assert len(uts.select_samples(np.arange(50.0), 0.14)) == 7
    assert uts.select_tokens(torch.rand(1, 50), 0.14).sum() == 7


def test_random_selection_ignores_the_threshold():
    """``random`` is the equal-budget ablation: a threshold on the random scores would drop samples at random."""
    stats = {"confidence": np.linspace(0.1, 0.9, 40)}
    picked = uts.stage1(stats, ["q"] * 40, "random", 0.5, np.random.default_rng(0), min_uncertainty=0.99)
    assert len(picked) == 20
    assert len(uts.stage1(stats, ["q"] * 40, "confidence", 0.5, np.random.default_rng(0), min_uncertainty=0.7)) < 20


def test_sample_uncertainty_methods():
    stats = {"confidence": np.array([0.9, 0.2]), "entropy": np.array([0.1, 2.0]), "margin": np.array([0.8, 0.1])}
    rng = np.random.default_rng(0)
    for m in ("confidence", "entropy", "margin"):
        assert np.argmax(uts.sample_uncertainty(stats, m, rng)) == 1
    assert uts.sample_uncertainty(stats, "random", rng).shape == (2,)


def test_normalized_confidence_removes_the_length_bias():
    # a sure 12-token caption (0.95 per token) and an unsure one-word answer (0.6): the product ranks
    # the caption as less sure; per token, the answer is the uncertain one
    stats = {"confidence": np.array([0.95 ** 12, 0.6]), "token_confidence": np.array([0.95, 0.6])}
    assert np.argmax(uts.sample_uncertainty(stats, "confidence", None)) == 0
    assert np.argmax(uts.sample_uncertainty(stats, "confidence", None, normalize=True)) == 1


def test_question_type_is_the_first_two_words():
    assert uts.question_type("how many circle are there ?") == "how many"
    assert uts.question_type("describe the image .") == "describe the"
    assert uts.question_type("") == ""


def test_stratified_selection_shares_the_budget_by_group():
    # group a: 6 samples, all more uncertain than any of group b's 3; budget 3 of 9
    u = np.array([0.9, 0.8, 0.7, 0.95, 0.85, 0.75, 0.1, 0.3, 0.2])
    g = np.array(["a"] * 6 + ["b"] * 3)
    assert uts.select_samples(u, 1 / 3).tolist() == [0, 3, 4]             # global: all from a
    assert uts.select_samples(u, 1 / 3, groups=g).tolist() == [0, 3, 7]   # 2 from a, 1 from b, top of each
    # a group never gets more than it holds, and the total stays ceil(budget * n)
    assert len(uts.select_samples(u, 0.8, groups=g)) == 8
    assert uts.select_samples(u, 1.0, groups=g).tolist() == list(range(9))
    with pytest.raises(Exception, match="group labels"):
        uts.select_samples(u, 0.5, groups=g[:4])


def test_shares_are_proportional_and_sum_to_k():
    for sizes, k in [([6, 3], 3), ([5, 5, 1], 4), ([1, 1, 1], 2), ([10, 0, 3], 13), ([7], 0)]:
        out = uts._shares(sizes, k)
        assert sum(out) == min(k, sum(sizes)) and all(0 <= o <= s for o, s in zip(out, sizes))
    assert uts._shares([6, 3], 3) == [2, 1]


def test_power_sampling_is_seeded_and_prefers_uncertain_samples():
    u = np.concatenate([np.full(50, 0.9), np.full(50, 0.01)])
    pick = lambda seed: uts.select_samples(u, 0.2, power=2.0, rng=np.random.default_rng(seed))
    assert pick(3).tolist() == pick(3).tolist() and len(pick(3)) == 20
    hits = np.mean([np.mean(pick(s) < 50) for s in range(20)])
    assert hits > 0.9                                   # p ~ u**2: 0.81 vs 0.0001
    assert not all(pick(s).tolist() == pick(0).tolist() for s in range(1, 5))   # stochastic, not the top
    with pytest.raises(Exception, match="rng"):
        uts.select_samples(u, 0.2, power=1.0)
    # the threshold applies to the uncertainty itself, not to the sampling key
    assert (u[uts.select_samples(u, 1.0, min_uncertainty=0.5, power=1.0, rng=np.random.default_rng(0))] > 0.5).all()


def test_stage1_applies_the_configured_policy():
    qs = ["how many circle are there ?"] * 6 + ["is there a red circle ?"] * 2
    stats = {"confidence": np.linspace(0.9, 0.2, 8), "token_confidence": np.linspace(0.2, 0.9, 8)}
    rng = lambda: np.random.default_rng(0)
    assert uts.stage1(stats, qs, "off", 0.25, rng()).tolist() == list(range(8))
    assert uts.stage1(stats, qs, "confidence", 0.25, rng()).tolist() == [6, 7]              # product: global
    assert uts.stage1(stats, qs, "confidence", 0.25, rng(), normalize=True).tolist() == [0, 1]
    assert uts.stage1(stats, qs, "confidence", 0.5, rng(), True).tolist() == [0, 1, 2, 3]
    assert uts.stage1(stats, qs, "confidence", 0.5, rng(), True, stratify=True).tolist() == [0, 1, 2, 6]  # 3 + 1
    # random ignores strata and power: the same picks as plain random at the same budget
    plain = uts.select_samples(uts.sample_uncertainty(stats, "random", rng()), 0.25)
    assert uts.stage1(stats, qs, "random", 0.25, rng(), True, True, 2.0).tolist() == plain.tolist()


def test_select_tokens_keeps_the_top_share():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9], [4.0, 3.0, 2.0, 1.0]])
    mask = uts.select_tokens(scores, 0.5)
    assert mask.tolist() == [[False, True, False, True], [True, True, False, False]]
    assert uts.select_tokens(scores, 0.01).sum(1).tolist() == [1, 1]


def test_mc_dropout_scores_flag_tokens_the_projector_is_unsure_of():
    proj = torch.nn.Linear(4, 4, bias=False)
    torch.nn.init.eye_(proj.weight)
    vis = torch.zeros(1, 3, 4)
    vis[0, 1] = 5.0  # large activations vary most under dropout
    s = uts.token_uncertainty_mc(proj, vis, passes=16, p=0.5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (1, 3) and int(s.argmax()) == 1 and float(s[0, 0]) == 0.0


def test_upload_round_trip_sends_only_kept_tokens():
    vis = torch.randn(3, 9, 8)
    mask = uts.select_tokens(torch.rand(3, 9), 0.5)
    ref = torch.full((8,), 0.25)
    kept = int(mask.sum())
    for bits in (2, 4, 8, 16):
        up = uts.encode_upload([[5, 6], [7], [8, 9, 10]], vis=vis, mask=mask, token_bits=bits)
        key = "tokens_2bit" if bits == 2 else "tokens"
        assert set(up) == {"questions", "q_len", key, "token_mask"} | ({"scales"} if bits < 16 else set())
        # 2 / 4 bit: four / two values per byte
        assert up[key].shape == ((kept, 8) if bits > 4 else (kept * 4,) if bits == 4 else (kept * 2,))
        assert up[key].dtype == {2: np.uint8, 4: np.uint8, 8: np.int8, 16: np.float16}[bits]
        out = uts.decode_upload(up, 9, 8, 61, ref)
        assert out["questions"] == [[5, 6], [7], [8, 9, 10]]
        err = (out["vis"][mask] - vis[mask]).abs()
        step = 1.5 if bits == 2 else 2 ** (bits - 1) - 1  # absmax / step = the quantisation step
        bound = (vis[mask].abs().amax(-1, keepdim=True) / step / 2 * 1.01) if bits < 16 else 2e-3
        assert (err <= bound).all()
        assert torch.equal(out["vis"][~mask], ref.expand(int((~mask).sum()), 8))
    full = uts.encode_upload([[5]] * 3, vis=vis, token_bits=16)
    assert sum(a.nbytes for a in up.values()) < 0.6 * sum(a.nbytes for a in full.values())


@pytest.mark.parametrize("breakage", ["truncated", "nan", "nan-scale", "qlen", "vocab", "mask", "missing", "dtype",
                                      "nibble-truncated", "nibble-zero", "nibble-no-scales", "int8-no-scales",
                                      "int8-min", "zero-scale", "fp16-with-scales", "crumb-truncated",
                                      "crumb-extra-byte", "crumb-no-scales", "crumb-and-tokens"])
def test_malformed_uploads_are_rejected(breakage):
    vis = torch.randn(2, 9, 8)
    bits = (8 if breakage in ("nan-scale", "int8-no-scales", "int8-min", "zero-scale")
            else 4 if breakage.startswith("nibble") else 2 if breakage.startswith("crumb") else 16)
    up = uts.encode_upload([[5, 6], [7]], vis=vis, mask=uts.select_tokens(torch.rand(2, 9), 0.5), token_bits=bits)
    if breakage == "crumb-truncated":
        up["tokens_2bit"] = up["tokens_2bit"][:-1]
    elif breakage == "crumb-extra-byte":
        up["tokens_2bit"] = np.append(up["tokens_2bit"], np.uint8(1))
    elif breakage == "crumb-no-scales":
        del up["scales"]
    elif breakage == "crumb-and-tokens":
        up["tokens"] = np.zeros((10, 8), np.int8)
    elif breakage == "int8-no-scales":
        del up["scales"]
    elif breakage == "int8-min":
        up["tokens"][0, 0] = -128
    elif breakage == "zero-scale":
        up["scales"][0] = 0
    elif breakage == "fp16-with-scales":
        up["scales"] = np.ones(len(up["tokens"]), np.float16)
    elif breakage == "nibble-truncated":
        up["tokens"] = up["tokens"][:-1]
    elif breakage == "nibble-zero":  # 0 encodes -8, outside the 4-bit range
        up["tokens"][0] &= 0x0F
    elif breakage == "nibble-no-scales":
        del up["scales"]
    elif breakage == "nan-scale":
        up["scales"][1] = np.nan
    elif breakage == "truncated":
        up["tokens"] = up["tokens"][:-1]
    elif breakage == "nan":
        up["tokens"][0, 0] = np.nan
    elif breakage == "qlen":
        up["q_len"] = np.array([2, 2], np.uint8)
    elif breakage == "vocab":
        up["questions"] = np.array([5, 6, 200], np.uint8)
    elif breakage == "mask":
        up["token_mask"] = up["token_mask"][:-1]
    elif breakage == "missing":
        del up["tokens"]
    else:
        up["tokens"] = up["tokens"].astype(np.float64)
    with pytest.raises(uts.PayloadError):
        uts.decode_upload(up, 9, 8, 61, None)


def test_raw_image_upload_needs_an_image_shape():
    up = uts.encode_upload([[5]], images=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(uts.PayloadError, match="image shape"):
        uts.decode_upload(up, 9, 8, 61, None)
    assert uts.decode_upload(up, 9, 8, 61, None, (4, 4, 3))["images"].shape == (1, 4, 4, 3)


@pytest.mark.parametrize("bits", [2, 4, 8, 16, "images"])
def test_injected_faults_are_rejected_for_every_encoding(bits):
    """``fleet.corrupt_prob``'s faults, each kind, on each upload encoding: the decoder rejects the upload,
    or (an over-long question) it decodes and the cloud's length check rejects it (``test_cdcca``)."""
    from clients.faults import corrupt

    if bits == "images":
        up = uts.encode_upload([[5, 6], [7]], images=np.ones((2, 4, 4, 3), np.uint8))
    else:
        up = uts.encode_upload([[5, 6], [7]], vis=torch.randn(2, 9, 8),
                               mask=uts.select_tokens(torch.rand(2, 9), 0.5), token_bits=bits)
    kinds = {}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        kind = int(np.random.default_rng(seed).integers(4))
        bad = corrupt(up, rng)
        try:
            got = uts.decode_upload(bad, 9, 8, 61, None, (4, 4, 3))
        except uts.PayloadError:
            kinds[kind] = "rejected"
            continue
        assert max(map(len, got["questions"])) == 200, (bits, kind)
        kinds[kind] = "long question"
    assert kinds == {0: "rejected", 1: "rejected", 2: "rejected", 3: "long question"}


def test_2bit_upload_padding_must_be_zero():
    vis, mask = torch.randn(1, 3, 3), torch.tensor([[True, True, False]])  # 6 values: two padding codes
    up = uts.encode_upload([[5]], vis=vis, mask=mask, token_bits=2)
    assert up["tokens_2bit"].shape == (2,) and up["tokens_2bit"][-1] & 0x0F == 0
    back = uts.decode_upload(up, 3, 3, 61, None)["vis"]
    assert torch.allclose(back[mask], vis[mask], atol=vis.abs().max() / 3 * 1.01)
    up["tokens_2bit"][-1] |= 1
    with pytest.raises(uts.PayloadError, match="padding"):
        uts.decode_upload(up, 3, 3, 61, None)


def test_4bit_upload_padding_must_be_zero():
    vis, mask = torch.randn(1, 3, 3), torch.tensor([[True, False, False]])  # 3 values: one padding nibble
    up = uts.encode_upload([[5]], vis=vis, mask=mask, token_bits=4)
    assert up["tokens"].shape == (2,) and up["tokens"][-1] & 0x0F == 0
    assert torch.allclose(uts.decode_upload(up, 3, 3, 61, None)["vis"][mask], vis[mask], atol=0.2 * vis.abs().max())
    up["tokens"][-1] |= 1
    with pytest.raises(uts.PayloadError, match="padding"):
        uts.decode_upload(up, 3, 3, 61, None)


def test_visual_token_path_equals_pixel_path(world):
    zoo, ds, model, init = world
    pr = zoo.prompter
    px = pr.pixels(np.asarray(ds["image"][:6]))
    batch = pr.train_batch(ds["question"][:6], ds["answer"][:6])
    batch.pop("labels")
    with torch.no_grad():
        a = model(**batch, pixel_values=px).logits
        b = model(**with_tokens(model, batch["input_ids"], visual_tokens(model, px)),
                  attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(a, b, atol=1e-5)
    preds, stats = answer_with_stats(model, pr, visual_tokens(model, px), ds["question"][:6], max_new_tokens=8)
    assert preds == answer(model, pr, ds["image"][:6], ds["question"][:6], max_new_tokens=8)
    assert ((stats["confidence"] > 0) & (stats["confidence"] <= 1)).all() and (stats["entropy"] >= 0).all()
    # per-token confidence is the geometric mean: never below the product, never above 1
    assert (stats["token_confidence"] >= stats["confidence"] - 1e-9).all() and (stats["token_confidence"] <= 1).all()


def _akd_setup(world):
    """The model reset to its initial adapters, teacher targets for 16 samples, an AKD config, an align map."""
    zoo, ds, model, init = world
    from fl_sim.models.adapters import load_adapter_state

    load_adapter_state(model, init)
    pr = zoo.prompter
    vis = visual_tokens(model, pr.pixels(np.asarray(ds["image"][:16])))
    tg = akd.teacher_targets(zoo.teacher, pr, vis, list(ds["question"][:16]), max_new_tokens=8)
    return tg, akd.AKDConfig(steps=25, batch_size=16, lr=5e-3), torch.nn.Linear(32, 64)


def _read_positions(tg):
    """The logits the KL reads (positions predicting an answer token) and the hidden states the feature
    loss reads (non-pad positions)."""
    mask = tg["attention_mask"].bool()
    ans = torch.zeros_like(mask)
    ans[:, :-1] = tg["labels"][:, 1:] != -100
    return tg["t_logits"][ans].float(), tg["t_hidden"][mask].float()


@pytest.mark.parametrize("max_new_tokens", [8, 1])
def test_teacher_states_from_the_generation_are_the_second_passes(world, max_new_tokens):
    """``teacher_states = "generation"`` distils what a second forward pass over prompt + answer gives (to
    fp16 rounding); rows that end without ``<eos>`` (all of them at 1 new token) take the second pass."""
    zoo, ds, model, _ = world
    pr = zoo.prompter
    vis = visual_tokens(model, pr.pixels(np.asarray(ds["image"][:16])))
    qs = list(ds["question"][:16])
    gen, fwd = (akd.teacher_targets(zoo.teacher, pr, vis, qs, max_new_tokens, states=s)
                for s in ("generation", "forward"))
    for k in ("input_ids", "attention_mask", "labels", "t_conf"):
        assert torch.equal(gen[k], fwd[k]), k
    assert gen["t_logits"].shape == fwd["t_logits"].shape and gen["t_hidden"].shape == fwd["t_hidden"].shape
    for a, b in zip(_read_positions(gen), _read_positions(fwd)):
        assert len(a) and torch.allclose(a, b, atol=2e-2, rtol=1e-2)
    with pytest.raises(FlSimError, match="teacher states 'both'"):
        akd.teacher_targets(zoo.teacher, pr, vis, qs, states="both")


def test_akd_lowers_the_loss_and_trains_only_adapters(world):
    _, _, model, init = world
    from fl_sim.models.adapters import adapter_parameters, load_adapter_state

    tg, cfg, align = _akd_setup(world)
    assert tg["t_logits"].shape[:2] == tg["input_ids"].shape and tg["t_hidden"].shape[-1] == 64
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        before = akd.akd_loss(model, align, tg, cfg)
    akd.train_adapters(model, align, lambda step: tg, cfg, seed=0)
    with torch.no_grad():
        after = akd.akd_loss(model, align, tg, cfg)
    assert float(after["loss"]) < 0.8 * float(before["loss"])
    assert after["kl"] < before["kl"] and after["feat"] < before["feat"]
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any(not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if n in trainable)
    assert len(adapter_parameters(model)) == len(trainable)  # every trainable parameter is an adapter tensor
    load_adapter_state(model, init)


def test_masked_akd_changes_only_the_masked_entries_and_still_lowers_the_loss(world):
    _, _, model, init = world
    from fl_sim.mechanisms import dwc
    from fl_sim.models.adapters import adapter_state, load_adapter_state

    tg, cfg, align = _akd_setup(world)
    gen = torch.Generator().manual_seed(0)
    scores = {k: torch.randn(v.shape, generator=gen) for k, v in init.items()}
    masks = dwc.train_mask(scores, dwc.DWCConfig(max_density=0.1))
    n = sum(v.numel() for v in init.values())
    assert sum(int(m.sum()) for m in masks.values()) == int(np.ceil(0.1 * n))
    with torch.no_grad():
        before = float(akd.akd_loss(model, align, tg, cfg)["loss"])
    akd.train_adapters(model, align, lambda step: tg, cfg, seed=0, masks=masks)
    with torch.no_grad():
        after = float(akd.akd_loss(model, align, tg, cfg)["loss"])
    state = adapter_state(model)
    changed = {k: state[k] != init[k] for k in init}
    assert all(not (changed[k] & ~masks[k]).any() for k in init)  # nothing outside the mask moved
    assert sum(int(c.sum()) for c in changed.values()) > 0.5 * sum(int(m.sum()) for m in masks.values())
    assert after < 0.9 * before
    with pytest.raises(ValueError, match="masks do not match"):
        akd.train_adapters(model, align, lambda step: tg, cfg, seed=0, masks=dict(list(masks.items())[1:]), steps=1)
    k0 = next(iter(masks))
    with pytest.raises(ValueError, match="masks do not match"):  # a mask that would merely broadcast
        akd.train_adapters(model, align, lambda step: tg, cfg, seed=0, steps=1,
                           masks=masks | {k0: masks[k0].reshape(-1)[:1]})
    load_adapter_state(model, init)


def test_anchor_samples_add_ce_on_true_answers_and_no_distillation(world):
    zoo, ds, model, init = world
    from fl_sim.models.adapters import load_adapter_state

    load_adapter_state(model, init)
    pr = zoo.prompter
    vis = visual_tokens(model, pr.pixels(np.asarray(ds["image"][:12])))
    tg = akd.teacher_targets(zoo.teacher, pr, vis[:6], list(ds["question"][:6]), max_new_tokens=8)
    anc = akd.anchor_targets(pr, vis[6:], list(ds["question"][6:12]), list(ds["answer"][6:12]),
                             tg["t_logits"].shape[-1], tg["t_hidden"].shape[-1])
    assert set(anc) == set(tg) and all(anc[k].shape[1:] == tg[k].shape[1:] for k in tg)
    assert anc["distil"].tolist() == [0.0] * 6 and tg["distil"].tolist() == [1.0] * 6
    first = anc["labels"][0][anc["labels"][0] != -100][:-1]  # the true answer's words, then eos
    assert pr.tok.decode(first.tolist()).strip() == ds["answer"][6]
    cfg = akd.AKDConfig()
    align = torch.nn.Linear(32, 64)
    with torch.no_grad():
        alone, mixed = akd.akd_loss(model, align, tg, cfg), akd.akd_loss(model, align, akd.concat([tg, anc]), cfg)
        only_anchor = akd.akd_loss(model, align, anc, cfg)
    assert mixed["kl"] == pytest.approx(alone["kl"], rel=1e-4)
    assert mixed["feat"] == pytest.approx(alone["feat"], rel=1e-4)
    assert mixed["ce"] != pytest.approx(alone["ce"], rel=1e-4)
    assert only_anchor["kl"] == 0 and only_anchor["feat"] == 0 and only_anchor["ce"] > 0


def test_question_targets_ask_the_teacher_about_the_captioned_images(world):
    """``akd.question_targets`` (``strategy.akd.extra_questions``): targets for generated questions, each on
    its own image's visual tokens, answered by the teacher. True captions here: the tiny teacher's own
    captions do not parse."""
    from fl_sim.world.domains import questions_from_captions

    zoo, ds, model, _ = world
    pr = zoo.prompter
    vis = visual_tokens(model, pr.pixels(np.asarray(ds["image"][:6])))
    caps, asked = list(ds["caption"][:6]) + ["one"], list(ds["question"][:6]) + ["?"]
    vis = torch.cat([vis, vis[:1]])
    want = questions_from_captions(caps, 2, np.random.default_rng(4), asked)
    tg = akd.question_targets(zoo.teacher, pr, vis, caps, 2, np.random.default_rng(4), asked, max_new_tokens=8)
    assert 6 <= akd.size(tg) == len(want) <= 12 and all(i < 6 for i, _ in want)
    assert torch.equal(tg["vis"], vis[[i for i, _ in want]].float()) and tg["distil"].tolist() == [1.0] * len(want)
    for row, (_, q) in zip(tg["input_ids"], want):  # each target's prompt is its generated question
        assert q in pr.tok.decode([t for t in row.tolist() if t != pr.pad])
    pseudo, _ = answer_with_stats(zoo.teacher, pr, vis[[i for i, _ in want]], [q for _, q in want], max_new_tokens=8)
    for row, a in zip(tg["labels"], pseudo):  # the labels are the teacher's answers on those images
        assert pr.tok.decode([t for t in row[row != -100].tolist() if t != pr.eos]).strip() == a.strip()
    assert akd.question_targets(zoo.teacher, pr, vis, ["one"] * 7, 2, np.random.default_rng(4)) == {}


def test_a_sequence_longer_than_the_positions_is_refused_not_cropped(world):
    zoo, ds, _, _ = world
    q = str(ds["question"][0])
    ids, _, labels = akd._padded_batch(zoo.prompter, [q], ["yes"])
    assert ids.shape[1] == zoo.prompter.max_len == 64 and (labels != -100).sum() == 2  # the answer and EOS
    with pytest.raises(FlSimError, match="positions"):
        akd._padded_batch(zoo.prompter, [" ".join([q] * 12)], ["yes"])


def test_akd_terms_switch_off(world):
    """A zero weight removes its term from the loss; the total is the weighted sum of the terms left."""
    tg, _, align = _akd_setup(world)
    model = world[2]
    with torch.no_grad():
        full = akd.akd_loss(model, align, tg, akd.AKDConfig(w_ce=1.0, w_kl=0.5, w_feat=2.0))
        assert set(full) == {"loss", "ce", "kl", "feat"} and all(full[k] > 0 for k in ("ce", "kl", "feat"))
        assert float(full["loss"]) == pytest.approx(full["ce"] + 0.5 * full["kl"] + 2.0 * full["feat"], rel=1e-5)
        for off, left in (("w_kl", {"ce", "feat"}), ("w_feat", {"ce", "kl"}), ("w_ce", {"kl", "feat"})):
            cfg = akd.AKDConfig(**{off: 0.0})
            out = akd.akd_loss(model, align if cfg.w_feat else None, tg, cfg)
            assert set(out) == {"loss"} | left, off
            want = sum(getattr(cfg, f"w_{k}") * full[k] for k in left)
            assert float(out["loss"]) == pytest.approx(want, rel=1e-5), off
    with pytest.raises(ValueError, match="at least one"):
        akd.AKDConfig(w_ce=0, w_kl=0, w_feat=0)


def test_replay_buffer_is_bounded_uniform_and_restorable():
    def targets(start, n):
        return {k: torch.arange(start, start + n).float().reshape(n, 1) for k in akd.TARGET_KEYS}

    buf = ReplayBuffer(capacity=50, seed=0)
    for r in range(20):
        buf.add(targets(100 * r, 20))
    assert len(buf) == 50 and buf.seen == 400
    rounds = (buf.data["input_ids"][:, 0] // 100).long()
    assert len(set(rounds.tolist())) >= 8  # old rounds survive: not a FIFO of the last 2.5 rounds
    other = ReplayBuffer(capacity=50, seed=0)
    other.load_state(buf.state())
    assert other.seen == 400 and torch.equal(other.data["vis"], buf.data["vis"])
    older = ReplayBuffer(capacity=50, seed=0)  # a checkpoint from before per-sample distillation weights
    older.load_state({k: v for k, v in buf.state().items() if k != "distil"})
    assert torch.equal(older.data["distil"], torch.ones(50))
    s = buf.sample(10, np.random.default_rng(1))
    assert akd.size(s) == 10


def test_packed_upload_round_trip_and_is_smaller_than_separate_arrays():
    from flwr.app import Array, ArrayRecord, RecordDict

    from fl_sim.protocol.records import pack_arrays, packed_record, payload_bytes, record_values, unpack_arrays

    rng = np.random.default_rng(0)
    up = uts.encode_upload([[5, 6, 7], [8, 9]], vis=torch.randn(2, 9, 16),
                           mask=torch.from_numpy(rng.random((2, 9)) < 0.5))
    back = unpack_arrays(pack_arrays(up))
    assert list(back) == list(up)
    for k in up:
        assert back[k].dtype == up[k].dtype and np.array_equal(back[k], up[k]), k

    sent = packed_record(up)  # a ConfigRecord with one bytes value, as devices send uploads
    again = unpack_arrays(record_values(sent)["packed"])
    assert all(np.array_equal(again[k], up[k]) for k in up)
    separate = payload_bytes(RecordDict({"u": ArrayRecord({k: Array(v) for k, v in up.items()})}))
    one_array = payload_bytes(RecordDict({"u": ArrayRecord({"packed": Array(pack_arrays(up))})}))
    one_bytes = payload_bytes(RecordDict({"u": sent}))
    assert one_bytes < one_array - 300 < separate - 4 * 200 - 300  # Flower frames each Array with ~450 B


@pytest.mark.parametrize("breakage", ["short", "header-len", "json", "dtype", "negative", "huge", "trailing",
                                      "not-uint8"])
def test_malformed_packed_payloads_are_rejected(breakage):
    import json as _json

    from fl_sim.protocol.records import pack_arrays, unpack_arrays

    good = pack_arrays({"a": np.arange(6, dtype=np.uint8), "b": np.ones((2, 2), np.float16)})

    def blob(header, data=b"\0" * 14):
        head = _json.dumps(header).encode()
        return np.frombuffer(np.uint32(len(head)).tobytes() + head + data, np.uint8)

    bad = {"short": good[:3], "header-len": good[:10], "json": blob("not a list"),
           "dtype": blob([["a", "|O", [6]]], b"\0" * 6), "negative": blob([["a", "|u1", [-6]]]),
           "huge": blob([["a", "<f4", [2 ** 40, 2 ** 40]]]), "trailing": np.concatenate([good, good[:2]]),
           "not-uint8": good.astype(np.int16)}[breakage]
    with pytest.raises(uts.PayloadError):
        unpack_arrays(bad)


def test_an_int8_teacher_labels_like_the_fp32_one(world):
    """strategy.akd.teacher_int8: the teacher's linears become int8 dynamic ones; its targets keep their shapes."""
    from fl_sim.device import model_cache
    from fl_sim.models import placement
    from fl_sim.models.mllm import visual_tokens

    placement.use("cpu")
    zoo, ds, _, _ = world
    path = str(zoo.paths["teacher"])
    fp32, q8 = model_cache.labelling_model(path), model_cache.labelling_model(path, int8=True)
    assert fp32 is model_cache.base_model(path) and q8 is model_cache.labelling_model(path, int8=True)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in q8.modules())
    vis = visual_tokens(fp32, zoo.prompter.pixels(np.asarray(ds["image"][:8])))
    questions = list(ds["question"][:8])
    a, b = (akd.teacher_targets(m, zoo.prompter, vis, questions, 6) for m in (fp32, q8))
    assert torch.isfinite(b["t_logits"].float()).all() and not torch.equal(a["t_logits"], b["t_logits"])
    same = np.mean([x == y for x, y in zip(akd.pseudo_labels(a, zoo.prompter), akd.pseudo_labels(b, zoo.prompter))])
    assert same >= 0.5


def test_question_ids_of_a_large_vocabulary_travel_unwrapped():
    """Tokenizers of 150k tokens (Qwen2): ids above 65,535 go as uint32, never wrapped to uint16."""
    up = uts.encode_upload([[70_000, 3], [151_000]], images=np.zeros((2, 4, 4, 3), np.uint8))
    assert up["questions"].dtype == np.uint32
    back = uts.decode_upload(up, 9, 8, 152_000, None, (4, 4, 3))
    assert back["questions"] == [[70_000, 3], [151_000]]
