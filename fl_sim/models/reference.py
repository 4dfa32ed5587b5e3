"""A supervised reference for a domain: what a small classifier learns from the same training split.

A user who brings a dataset needs to know whether the teacher is adequate on it. ``fl-sim evaluate
--domains`` trains this reference on the domain's train split and scores it on the test split the models
are scored on, with the same normalised match (``fl_sim.world.answers.matches``): a teacher below it has
not learnt the domain.

The model: a small CNN over the image (three 3x3 convolutions of 16, 32 and 64 channels, the first with
stride 2, each with batch norm and 2x2 max pooling, then global average pooling) and a bag of words over
the question (the mean of learnt word embeddings), concatenated and classified by a two-layer MLP over the
train split's distinct answers. A test answer the train split never gives cannot be predicted. About 15 s
to train on this machine's CPU for 4,000 rows at the fleet's 48x48 images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fl_sim.world.answers import matches, normalise


class Reference(nn.Module):
    def __init__(self, n_words: int, n_answers: int, width: int = 64):
        super().__init__()
        layers, c = [], 3
        for i, out in enumerate((16, 32, width)):
            layers += [nn.Conv2d(c, out, 3, stride=2 if i == 0 else 1, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c = out
        self.cnn = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.words = nn.EmbeddingBag(n_words + 1, width, mode="mean", padding_idx=0)  # 0: unknown word
        self.head = nn.Sequential(nn.Linear(2 * width, 2 * width), nn.ReLU(), nn.Linear(2 * width, n_answers))

    def forward(self, images: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """``images``: float ``(B, 3, H, W)`` in [0, 1]; ``words``: ``(B, L)`` word ids, 0-padded."""
        return self.head(torch.cat([self.cnn(images), self.words(words)], dim=1))


def _words(questions, vocab: dict[str, int], length: int) -> torch.Tensor:
    out = np.zeros((len(questions), length), np.int64)
    for i, q in enumerate(questions):
        ids = [vocab.get(w, 0) for w in normalise(str(q)).split()][:length]
        out[i, :len(ids)] = ids
    return torch.from_numpy(out)


def _images(images) -> torch.Tensor:
    return torch.from_numpy(np.asarray(images, np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()


def train_reference(train, epochs: int = 15, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                    max_rows: int = 20_000):
    """The reference trained on ``train`` (a split with image, question, answer columns; at most
    ``max_rows`` of it, a seeded choice). Returns ``predict(images, questions) -> answers``."""
    rng = np.random.default_rng(seed)
    rows = np.arange(len(train)) if len(train) <= max_rows else np.sort(rng.choice(len(train), max_rows, False))
    ds = train.select(rows) if len(rows) < len(train) else train
    questions, answers = [str(q) for q in ds["question"]], [str(a) for a in ds["answer"]]
    labels = sorted(set(answers))
    words = sorted({w for q in questions for w in normalise(q).split()})
    vocab = {w: i + 1 for i, w in enumerate(words)}
    length = max(1, max(len(normalise(q).split()) for q in questions))
    x_img, x_words = _images(ds["image"]), _words(questions, vocab, length)
    y = torch.tensor([labels.index(a) for a in answers])
    torch.manual_seed(seed)
    model = Reference(len(words), len(labels))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * max(1, -(-len(y) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(model(x_img[batch], x_words[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()

    @torch.no_grad()
    def predict(images, qs) -> list[str]:
        logits = torch.cat([model(_images(images[i:i + 256]), _words(qs[i:i + 256], vocab, length))
                            for i in range(0, len(qs), 256)])
        return [labels[i] for i in logits.argmax(1).tolist()]

    return predict


def reference_accuracy(train, test, seed: int = 0) -> dict[str, float]:
    """``{"vqa": normalised match, "vqa_exact": exact match}`` of the reference trained on ``train``, on
    ``test`` (its non-caption rows), and the normalised match per question type (the test rows' ``family``)
    where there is more than one."""
    predict = train_reference(train, seed=seed)
    fam = np.asarray(test["family"])
    keep = np.flatnonzero(fam != "caption")
    answers = [str(a) for a in np.asarray(test["answer"])[keep]]
    pred = predict(np.asarray(test["image"])[keep], [str(q) for q in np.asarray(test["question"])[keep]])
    correct = np.array([matches(p, a) for p, a in zip(pred, answers)])
    types = sorted(set(fam[keep]))
    by_type = {t: float(correct[fam[keep] == t].mean()) for t in types} if len(types) > 1 else {}
    exact = np.mean([p == a for p, a in zip(pred, answers)])
    return by_type | {"vqa": float(correct.mean()), "vqa_exact": float(exact)}
