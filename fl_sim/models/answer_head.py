"""The answer classifier stage A+ trains the vision tower through (``fl_sim.models.train.adapt_frontend``).

A user's images carry no per-cell labels, so the tower learns them from the answers: each of the tower's
visual tokens is projected to a few features, the question is a bag of the shared tokenizer's words, and an
MLP over both picks the answer among the user's most frequent ones (normalised, ``fl_sim.world.answers``).
This is the supervised reference's recipe (``fl_sim.models.reference``) with the tower in place of its CNN:
seconds a thousand steps, against minutes through a language model, and what it asks of the tokens (that
the answer can be read from them) is what every model of the zoo then reads.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch import nn

from fl_sim.models.mllm import Prompter, tower_tokens
from fl_sim.world.answers import normalise

MAX_ANSWERS = 1000  # classes: the most frequent normalised answers given at least twice


def answer_classes(answers) -> list[str]:
    """The normalised answers a classifier can learn: given at least twice, the ``MAX_ANSWERS`` most frequent
    (ties in alphabetical order). Empty when no answer repeats (free-form captions, say)."""
    counts = Counter(normalise(a) for a in answers)
    counts.pop("", None)
    ranked = sorted((a for a, c in counts.items() if c >= 2), key=lambda a: (-counts[a], a))
    return ranked[:MAX_ANSWERS]


class AnswerHead(nn.Module):
    def __init__(self, hidden: int, n_tokens: int, vocab: int, classes: list[str], width: int = 64):
        super().__init__()
        self.classes = {a: i for i, a in enumerate(classes)}
        self.tokens = nn.Linear(hidden, width)
        self.words = nn.EmbeddingBag(vocab, width, mode="mean", padding_idx=0)
        self.head = nn.Sequential(nn.Linear((n_tokens + 1) * width, 4 * width), nn.ReLU(),
                                  nn.Linear(4 * width, len(classes)))

    def known(self, samples) -> list[dict]:
        """The samples whose answer is one of the classes."""
        return [s for s in samples if normalise(str(s["answer"])) in self.classes]

    def logits(self, tower, prompter: Prompter, samples) -> torch.Tensor:
        vis = tower_tokens(tower, np.stack([s["image"] for s in samples]))
        ids = [prompter.words(str(s["question"])) or [0] for s in samples]
        words = torch.zeros((len(ids), max(map(len, ids))), dtype=torch.long)  # 0: the tokenizer's <pad>
        for i, w in enumerate(ids):
            words[i, :len(w)] = torch.tensor(w)
        return self.head(torch.cat([self.tokens(vis).flatten(1), self.words(words)], dim=1))

    def loss(self, tower, prompter: Prompter, samples) -> torch.Tensor:
        """Cross-entropy over ``samples``, which must all be ``known``."""
        target = torch.tensor([self.classes[normalise(str(s["answer"]))] for s in samples])
        return nn.functional.cross_entropy(self.logits(tower, prompter, samples), target)

    @torch.no_grad()
    def accuracy(self, tower, prompter: Prompter, samples, batch_size: int = 256) -> float:
        """Normalised exact match over ``samples`` (an answer outside the classes counts as missed)."""
        if not samples:
            return 0.0
        names = list(self.classes)
        hits = 0
        for i in range(0, len(samples), batch_size):
            part = samples[i:i + batch_size]
            pred = self.logits(tower, prompter, part).argmax(-1).tolist()
            hits += sum(names[p] == normalise(str(s["answer"])) for p, s in zip(pred, part))
        return hits / len(samples)
