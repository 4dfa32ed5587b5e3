"""Rows the teacher labelled that do not fit a tier's positions (a tier that reads text its own way): counted
per round, warned of once per run, never a crash, never a silent loss."""

import logging

import numpy as np


def test_rows_that_do_not_fit_a_tiers_positions_are_counted_and_warned_once(family_checkpoints, caplog,
                                                                             monkeypatch):
    from fl_sim.cloud.views import Views
    from fl_sim.config import AKDConfig
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd
    from fl_sim.models.mllm import visual_tokens
    from fl_sim.world.catalog import NO_DOMAINS

    paths = {"teacher": str(family_checkpoints["clip-llama"]), "small": str(family_checkpoints["idefics3"])}
    views = Views(paths, ["small"], NO_DOMAINS, AKDConfig(), 0)
    teacher, pr_t = model_cache.base_model(paths["teacher"]), views.prompter("teacher")
    images = list(np.random.default_rng(0).integers(0, 256, (3, *model_cache.IMAGE_SHAPE), dtype=np.uint8))
    long = " ".join(["is there a red circle?"] * 6)
    questions = ["is there a red circle?", long, "how many shapes are there?"]
    labelled = akd.teacher_targets(teacher, pr_t, visual_tokens(teacher, pr_t.pixels(np.stack(images))), questions, 4)
    pr = views.prompter("small")
    monkeypatch.setattr(pr, "max_len", len(pr.prompt(long)))  # the long question leaves no room for an answer
    with caplog.at_level(logging.WARNING, logger="fl_sim.cloud.views"):
        for _ in range(2):  # two rounds
            targets, unfit = views.targets("small", labelled, questions, images)
            assert unfit == 1 and akd.size(targets) == 2
    warned = [r for r in caplog.records if "do not fit" in r.getMessage()]
    assert len(warned) == 1 and "1 of 3 uploaded rows" in warned[0].getMessage()


def test_a_tier_with_a_verbose_tokenizer_is_distilled_on_the_rows_that_fit(family_checkpoints, tmp_path):
    """A tier whose tokenizer reads one token per byte (its BPE merges removed): the teacher's answers
    re-tokenised for it overflow its positions. Padding every row, as AKD once did, stops the round; the
    cloud's views distil the rows that fit and count the others."""
    import json
    import shutil

    import pytest

    from fl_sim import FlSimError
    from fl_sim.cloud.views import Views
    from fl_sim.config import AKDConfig
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd
    from fl_sim.models.mllm import visual_tokens
    from fl_sim.world.catalog import NO_DOMAINS

    verbose = shutil.copytree(family_checkpoints["idefics3"], tmp_path / "verbose")
    tok = json.loads((verbose / "tokenizer.json").read_text())
    tok["model"]["merges"] = []
    (verbose / "tokenizer.json").write_text(json.dumps(tok))
    paths = {"teacher": str(family_checkpoints["clip-llama"]), "verbose": str(verbose)}
    views = Views(paths, ["verbose"], NO_DOMAINS, AKDConfig(), 0)
    teacher, pr_t, pr = model_cache.base_model(paths["teacher"]), views.prompter("teacher"), views.prompter("verbose")
    questions = ["is there a red circle?", "how many shapes are there?", "what colour is the square on the left?",
                 "which shape is the largest one in the picture?"]
    images = list(np.random.default_rng(1).integers(0, 256, (4, *model_cache.IMAGE_SHAPE), dtype=np.uint8))
    labelled = akd.teacher_targets(teacher, pr_t, visual_tokens(teacher, pr_t.pixels(np.stack(images))), questions, 12)
    answers = akd.pseudo_labels(labelled, pr_t)
    fit = [akd.fits(pr, q, a) for q, a in zip(questions, answers)]
    assert not all(fit), [len(pr.prompt(q)) + len(pr.words(a)) for q, a in zip(questions, answers)]
    vis = visual_tokens(model_cache.base_model(paths["verbose"]), pr.pixels(np.stack(images)))
    with pytest.raises(FlSimError, match="positions, more than"):
        akd.student_targets(pr, vis, questions, labelled, answers)
    targets, unfit = views.targets("verbose", labelled, questions, images)
    assert unfit == fit.count(False) and akd.size(targets) == fit.count(True) > 0, fit
