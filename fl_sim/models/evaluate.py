"""Exact-match VQA accuracy per domain x question family, and caption BLEU-4."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from fl_sim.models.mllm import Prompter, answer
from fl_sim.world.answers import ANSWER_TOKENS, matches
from fl_sim.world.catalog import is_user_domain
from fl_sim.world.domains import VQA_FAMILIES

CAPTION_MAX_TOKENS = 28


def bleu4(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 (one reference per hypothesis, uniform weights, brevity penalty), in [0, 100]."""
    match, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, r in zip(hypotheses, references):
        hw, rw = h.split(), r.split()
        hyp_len, ref_len = hyp_len + len(hw), ref_len + len(rw)
        for n in range(1, 5):
            hn = Counter(tuple(hw[i:i + n]) for i in range(len(hw) - n + 1))
            rn = Counter(tuple(rw[i:i + n]) for i in range(len(rw) - n + 1))
            match[n - 1] += sum(min(c, rn[g]) for g, c in hn.items())
            total[n - 1] += max(0, len(hw) - n + 1)
    if hyp_len == 0 or min(match) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_p)


def evaluate(model, prompter: Prompter, datasets: dict) -> dict:
    """``{domain: {family: accuracy, "vqa": accuracy over VQA families, "bleu": caption BLEU-4}}``; on a
    domain backed by a dataset on disk, accuracy compares normalised answers (``fl_sim.world.answers``), per
    question type, with the raw exact match as ``"vqa_exact"``.

    Accuracies are fractions in [0, 1]; ``datasets`` maps a domain name to a dataset with columns
    image, question, answer, family.
    """
    table = {}
    for domain, ds in datasets.items():
        fam = np.asarray(ds["family"])
        images, questions, answers = ds["image"], np.asarray(ds["question"]), np.asarray(ds["answer"])
        row = {}
        vqa = np.flatnonzero(fam != "caption")
        cap = np.flatnonzero(fam == "caption")
        correct = np.zeros(len(fam), bool)
        if len(vqa):
            user = is_user_domain(domain)
            pred = answer(model, prompter, images[vqa], questions[vqa], max_new_tokens=ANSWER_TOKENS if user else 6)
            exact = np.array([p == a for p, a in zip(pred, answers[vqa])])
            correct[vqa] = [matches(p, a) for p, a in zip(pred, answers[vqa])] if user else exact
            for f in (VQA_FAMILIES if not user else sorted(set(fam[vqa]))):
                sel = fam == f
                if sel.any():
                    row[f] = float(correct[sel].mean())
            row["vqa"] = float(correct[vqa].mean())
            if user:  # normalised answers (fl_sim.world.answers) above; the raw exact match beside them
                row["vqa_exact"] = float(exact.mean())
        if len(cap):
            pred = answer(model, prompter, images[cap], questions[cap], max_new_tokens=CAPTION_MAX_TOKENS)
            row["bleu"] = bleu4(pred, list(answers[cap]))
        table[domain] = row
    return table
