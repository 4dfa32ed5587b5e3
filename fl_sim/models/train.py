"""Pretraining recipes: stage A (vision front-end on per-cell attributes), stage A+ (the front-end on
the user's answers, when the experiment brings its own data), stage B (projector + LM).

Both stages draw fresh samples every batch from the deterministic generator (a pretraining stream that
never touches the cached train/test splits), use fp32 (bf16 autocast is ~100x slower on CPUs without
AVX512-BF16, measured on this machine), AdamW with linear warm-up and cosine decay.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch import nn

from fl_sim.models.answer_head import AnswerHead, answer_classes
from fl_sim.models.mllm import Prompter, tower_tokens
from fl_sim.models.presets import FrontendPreset
from fl_sim.world.catalog import NO_DOMAINS
from fl_sim.world.data import sample_stream
from fl_sim.world.domains import DOMAINS, compositional_cells
from fl_sim.world.scenes import COLOURS, DIGIT_SHAPES, GEOMETRIC_SHAPES, GRID, SIZES

ANCHOR_WEIGHT = 10.0  # stage A+: the built-in tokens' relative drift from stage A's, against the answers' loss
HEAD_LR = 2e-3  # stage A+: the answer head's and the per-cell heads' learning rate (the tower's: user_lr)

SHAPE_CLASSES = ["empty"] + GEOMETRIC_SHAPES + DIGIT_SHAPES
COLOUR_CLASSES = ["empty"] + list(COLOURS)
SIZE_CLASSES = ["empty"] + SIZES


class MixedStream:
    """Fresh samples from several domains; each sample's domain is drawn uniformly, or in proportion to
    ``weights`` (one per domain). A sample of a dataset on disk (a domain of ``catalog``) is ``shifted`` by up
    to ``shift`` pixels: its few train pictures are drawn again and again, the built-in world's never."""

    def __init__(self, domains, seed: int, cell_px: int, families=None, weights=None, catalog=NO_DOMAINS,
                 shift: int = 0):
        self.streams = [sample_stream(d, "train", seed, cell_px, families, catalog) for d in domains]
        self.on_disk = [d in catalog for d in domains]
        self.rng = np.random.default_rng([seed, 99])
        self.moves, self.shift = np.random.default_rng([seed, 98]), shift
        self.p = None if weights is None else np.asarray(weights, float) / float(np.sum(weights))

    def _pick(self) -> int:
        if self.p is None:
            return int(self.rng.integers(len(self.streams)))
        return int(self.rng.choice(len(self.streams), p=self.p))

    def batch(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            k = self._pick()
            s = next(self.streams[k])
            out.append(shifted(s, self.shift, self.moves) if self.on_disk[k] else s)
        return out


def _schedule(opt, steps: int, warmup: int):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))
    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def _cell_labels(samples) -> torch.Tensor:
    """``(B, 9, 5)`` per-cell class ids: shape, colour, size (0 = empty cell), row, column."""
    lab = np.zeros((len(samples), GRID * GRID, 5), np.int64)
    lab[:, :, 3], lab[:, :, 4] = np.arange(GRID * GRID) // GRID, np.arange(GRID * GRID) % GRID
    for b, s in enumerate(samples):
        for o in s["objects"]:
            lab[b, o.cell, :3] = (SHAPE_CLASSES.index(o.shape), COLOUR_CLASSES.index(o.colour),
                                  SIZE_CLASSES.index(o.size))
    return torch.from_numpy(lab)


def _images(samples) -> np.ndarray:
    return np.stack([s["image"] for s in samples])


class CellHeads(nn.Module):
    """Stage A's linear read-outs of every cell's shape, colour, size, row and column from the tower's tokens."""

    NAMES = ("shape", "colour", "size", "row", "column")

    def __init__(self, hidden: int):
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(hidden, len(SHAPE_CLASSES)), nn.Linear(hidden, len(COLOUR_CLASSES)),
                                    nn.Linear(hidden, len(SIZE_CLASSES)), nn.Linear(hidden, GRID),
                                    nn.Linear(hidden, GRID)])

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        return [head(tokens) for head in self.heads]

    def loss(self, tokens: torch.Tensor, samples) -> torch.Tensor:
        lab = _cell_labels(samples)
        return sum(nn.functional.cross_entropy(lg.flatten(0, 1), lab[..., k].flatten())
                   for k, lg in enumerate(self(tokens)))

    @torch.no_grad()
    def accuracy(self, frontend, samples) -> dict[str, float]:
        lab = _cell_labels(samples)
        return {name: float((lg.argmax(-1) == lab[..., k]).float().mean())
                for k, (name, lg) in enumerate(zip(self.NAMES, self(tower_tokens(frontend, _images(samples)))))}


def train_frontend(frontend, fe: FrontendPreset, cell_px: int, seed: int, progress=None) -> tuple[dict, CellHeads]:
    """Stage A: the SigLIP tower learns per-cell shape/colour/size on every domain, or on every
    compositional cell with ``fe.compositional`` (a shared, frozen
    "foundation" front-end afterwards). Returns training metrics including held-out cell accuracy, and
    the trained read-out heads (stage A+ keeps training them)."""
    torch.manual_seed(seed)
    heads = CellHeads(frontend.config.hidden_size)
    params = list(frontend.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=fe.lr, weight_decay=0.01)
    sched = _schedule(opt, fe.steps, max(1, fe.steps // 10))
    domains, weights = list(DOMAINS), None
    if fe.compositional:
        cells = compositional_cells()
        domains = cells + (list(DOMAINS) if fe.builtin_share else [])
        if fe.builtin_share:
            share = fe.builtin_share
            weights = [(1 - share) / len(cells)] * len(cells) + [share / len(DOMAINS)] * len(DOMAINS)
    stream = MixedStream(domains, seed, cell_px, weights=weights)
    frontend.train()
    t0 = time.time()

    for step in range(fe.steps):
        batch = stream.batch(fe.batch_size)
        loss = heads.loss(tower_tokens(frontend, _images(batch)), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(step + 1, fe.steps, loss.item())
    frontend.eval()
    acc = heads.accuracy(frontend, MixedStream(domains, seed + 1, cell_px, weights=weights).batch(256))
    return {"seconds": time.time() - t0, "steps": fe.steps, "final_loss": loss.item(), "cell_accuracy": acc}, heads


def adapt_frontend(frontend, heads: CellHeads, fe: FrontendPreset, tokenizer, catalog, cell_px: int,
                   seed: int, progress=None) -> dict:
    """Stage A+: the front-end learns the user's images, which have no per-cell labels to supervise stage A.

    Each step, the tower (at ``fe.user_lr``) and an ``AnswerHead`` answer a batch of the user domains' train
    rows (every user domain drawn alike, each image ``shifted`` by up to ``fe.user_shift`` pixels, rows whose
    answer is not among the head's classes left out), and a half batch of built-in samples keeps what stage A
    built: its per-cell loss (``heads``, trained on) and the tower's tokens held to stage A's (their squared
    drift relative to their mean square, weighted ``ANCHOR_WEIGHT``), so what every model reads from a
    built-in image is kept while the user's features form. The head is discarded; every model of the zoo is
    trained on top of the tower.
    Returns the training metrics, the head's accuracy on the user's test rows (what the tokens tell of the
    user's answers) and the held-out cell accuracy after it (stage A's measure: what the built-in features kept).
    """
    torch.manual_seed(seed)
    user_domains = catalog.names()
    given = [a for d in user_domains for a in catalog.load(d, "train", 10**12, seed, cell_px)["answer"]]
    classes = answer_classes(given)
    if not classes:
        return {"steps": 0, "domains": user_domains, "skipped": "no answer of the user's train rows repeats"}
    prompter = Prompter(tokenizer)
    head = AnswerHead(frontend.config.hidden_size, prompter.n_visual, len(tokenizer), classes)
    before = copy.deepcopy(frontend).eval().requires_grad_(False)  # stage A's tower, the anchor
    user = MixedStream(user_domains, seed, cell_px, catalog=catalog, shift=fe.user_shift)
    built_in = MixedStream(list(DOMAINS), seed, cell_px)
    opt = torch.optim.AdamW([{"params": list(head.parameters()) + list(heads.parameters())},
                             {"params": list(frontend.parameters()), "lr": fe.user_lr}], lr=HEAD_LR, weight_decay=1e-4)
    sched = _schedule(opt, fe.user_steps, max(1, fe.user_steps // 20))
    frontend.train()
    t0, ema = time.time(), None
    for step in range(fe.user_steps):
        known = head.known(user.batch(fe.batch_size))
        loss = head.loss(frontend, prompter, known) if known else torch.zeros(())
        anchor = built_in.batch(max(1, fe.batch_size // 2))
        new = tower_tokens(frontend, _images(anchor))
        with torch.no_grad():
            old = tower_tokens(before, _images(anchor))
        drift = (new - old).pow(2).mean() / old.pow(2).mean().clamp_min(1e-8)
        total = loss + heads.loss(new, anchor) + ANCHOR_WEIGHT * drift
        opt.zero_grad()
        total.backward()
        opt.step()
        sched.step()
        ema = float(loss.detach()) if ema is None else 0.95 * ema + 0.05 * float(loss.detach())
        if progress:
            progress(step + 1, fe.user_steps, ema)
    frontend.eval()
    test = [s for d in user_domains for s in _rows(catalog.load(d, "test", 1000, seed, cell_px))]
    return {"seconds": time.time() - t0, "steps": fe.user_steps, "final_loss_ema": ema, "domains": user_domains,
            "answers": len(classes), "answer_accuracy": head.accuracy(frontend, prompter, test),
            "drift": float(drift.detach()),
            "cell_accuracy": heads.accuracy(frontend, MixedStream(list(DOMAINS), seed + 1, cell_px).batch(256))}


def shifted(sample: dict, shift: int, rng: np.random.Generator) -> dict:
    """``sample`` with its image moved by up to ``shift`` pixels along each axis, its edges repeated."""
    if not shift:
        return sample
    h, w = sample["image"].shape[:2]
    dy, dx = (int(v) for v in rng.integers(-shift, shift + 1, 2))
    padded = np.pad(sample["image"], ((shift, shift), (shift, shift), (0, 0)), mode="edge")
    return dict(sample, image=padded[shift + dy:shift + dy + h, shift + dx:shift + dx + w])


def _rows(ds) -> list[dict]:
    cols = {k: ds[k] for k in ("image", "question", "answer")}
    return [{k: v[i] for k, v in cols.items()} for i in range(len(ds))]


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged within each sample, ``(B,)``.

    Averaging per sample (not per token) keeps long captions from drowning one-word answers.
    """
    lg, lab = logits[:, :-1].float(), labels[:, 1:]
    tok = nn.functional.cross_entropy(lg.transpose(1, 2), lab, ignore_index=-100, reduction="none")
    mask = (lab != -100).float()
    return (tok * mask).sum(1) / mask.sum(1).clamp_min(1)


def train_answers(model, prompter: Prompter, domains, steps: int, batch_size: int, lr: float, seed: int,
                  cell_px: int, progress=None, trainable=None, weights=None, catalog=NO_DOMAINS,
                  shift: int = 0) -> dict:
    """Stage B: train ``trainable`` parameters (default: all but the vision tower) on answers only,
    drawing each sample's domain uniformly or in proportion to ``weights`` (one per domain), the images of
    ``catalog``'s datasets moved by up to ``shift`` pixels."""
    torch.manual_seed(seed)
    model.model.vision_tower.requires_grad_(False)
    params = [p for p in (trainable if trainable is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = _schedule(opt, steps, max(1, steps // 20))
    stream = MixedStream(domains, seed, cell_px, weights=weights, catalog=catalog, shift=shift)
    model.train()
    t0, ema = time.time(), None
    for step in range(steps):
        samples = stream.batch(batch_size)
        # captions are ~3x longer than answers: separate forward passes avoid padding every row to them
        groups = [g for g in ([s for s in samples if s["family"] != "caption"],
                              [s for s in samples if s["family"] == "caption"]) if g]
        opt.zero_grad()
        loss = 0.0
        for g in groups:
            batch = prompter.train_batch([s["question"] for s in g], [s["answer"] for s in g])
            labels = batch.pop("labels")
            logits = model(**batch, pixel_values=prompter.pixels(np.stack([s["image"] for s in g]))).logits
            loss = loss + per_sample_loss(logits, labels).sum() / len(samples)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema = float(loss.detach()) if ema is None else 0.95 * ema + 0.05 * float(loss.detach())
        if progress:
            progress(step + 1, steps, ema)
    model.eval()
    return {"seconds": time.time() - t0, "steps": steps, "final_loss_ema": ema}
