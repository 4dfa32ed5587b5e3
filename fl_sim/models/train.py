"""Pretraining recipes: stage A (vision front-end on per-cell attributes), stage A+ (the front-end on
answers, when the experiment brings its own data), stage B (projector + LM).

Both stages draw fresh samples every batch from the deterministic generator (a pretraining stream that
never touches the cached train/test splits), use fp32 (bf16 autocast is ~100x slower on CPUs without
AVX512-BF16, measured on this machine), AdamW with linear warm-up and cosine decay.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from fl_sim.models.mllm import Prompter, build_mllm
from fl_sim.models.presets import FrontendPreset, ModelPreset
from fl_sim.world.catalog import NO_DOMAINS
from fl_sim.world.data import sample_stream
from fl_sim.world.domains import DOMAINS, compositional_cells
from fl_sim.world.scenes import COLOURS, DIGIT_SHAPES, GEOMETRIC_SHAPES, GRID, SIZES

ANCHOR_WEIGHT = 10.0  # stage A+: the built-in tokens' relative drift from stage A's, against the answers' loss
# the LM that stage A+ trains the tower under, thrown away afterwards
PROXY_LM = ModelPreset(role="teacher", hidden=128, layers=2, heads=4, steps=1, lr=1e-3,
                       description="stage A+ proxy LM")

SHAPE_CLASSES = ["empty"] + GEOMETRIC_SHAPES + DIGIT_SHAPES
COLOUR_CLASSES = ["empty"] + list(COLOURS)
SIZE_CLASSES = ["empty"] + SIZES


class MixedStream:
    """Fresh samples from several domains; each sample's domain is drawn uniformly, or in proportion to
    ``weights`` (one per domain)."""

    def __init__(self, domains, seed: int, cell_px: int, families=None, weights=None, catalog=NO_DOMAINS):
        self.streams = [sample_stream(d, "train", seed, cell_px, families, catalog) for d in domains]
        self.rng = np.random.default_rng([seed, 99])
        self.p = None if weights is None else np.asarray(weights, float) / float(np.sum(weights))

    def _pick(self) -> int:
        if self.p is None:
            return int(self.rng.integers(len(self.streams)))
        return int(self.rng.choice(len(self.streams), p=self.p))

    def batch(self, n: int) -> list[dict]:
        return [next(self.streams[self._pick()]) for _ in range(n)]


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


class CellHeads(nn.Module):
    """Stage A's linear read-outs of every cell's shape, colour, size, row and column from the tower."""

    NAMES = ("shape", "colour", "size", "row", "column")

    def __init__(self, hidden: int):
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(hidden, len(SHAPE_CLASSES)), nn.Linear(hidden, len(COLOUR_CLASSES)),
                                    nn.Linear(hidden, len(SIZE_CLASSES)), nn.Linear(hidden, GRID),
                                    nn.Linear(hidden, GRID)])

    def forward(self, frontend, samples) -> list[torch.Tensor]:
        x = Prompter.pixels(np.stack([s["image"] for s in samples]))
        feats = frontend(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        return [head(feats) for head in self.heads]

    def loss(self, frontend, samples) -> torch.Tensor:
        lab = _cell_labels(samples)
        return sum(nn.functional.cross_entropy(lg.flatten(0, 1), lab[..., k].flatten())
                   for k, lg in enumerate(self(frontend, samples)))

    @torch.no_grad()
    def accuracy(self, frontend, samples) -> dict[str, float]:
        lab = _cell_labels(samples)
        return {name: float((lg.argmax(-1) == lab[..., k]).float().mean())
                for k, (name, lg) in enumerate(zip(self.NAMES, self(frontend, samples)))}


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
        loss = heads.loss(frontend, stream.batch(fe.batch_size))
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

    A fresh MLLM (``frontend`` + projector + the small ``PROXY_LM``) trains every parameter, the tower at
    ``fe.user_lr``, on answers from every built-in domain and every user domain (half the samples from the
    user's); on the batch's built-in samples, stage A's per-cell loss (``heads``, trained on) stays and the
    tower's tokens are held to stage A's (their squared drift relative to their mean square, weighted
    ``ANCHOR_WEIGHT``: what every model reads from a built-in image, counts included, is kept), so the
    built-in features are kept while the new ones form on the user's images. Then ``frontend`` takes the
    trained tower's weights and the rest is discarded; every model of the zoo is trained on top of it.
    Returns the training metrics and the held-out cell accuracy after it (stage A's measure: what the
    built-in features kept).
    """
    import copy

    torch.manual_seed(seed)
    proxy = build_mllm(PROXY_LM, fe, cell_px, tokenizer)
    tower = proxy.model.vision_tower
    tower.load_state_dict(frontend.state_dict())
    before = copy.deepcopy(frontend).eval().requires_grad_(False)  # stage A's tower, the anchor
    user_domains = catalog.names()
    domains = list(DOMAINS) + user_domains
    weights = [0.5 / len(DOMAINS)] * len(DOMAINS) + [0.5 / len(user_domains)] * len(user_domains)

    def keep_built_in(samples):
        built_in = [s for s in samples if "objects" in s]
        if not built_in:
            return 0.0
        x = Prompter.pixels(np.stack([s["image"] for s in built_in]))
        new = tower(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        with torch.no_grad():
            old = before(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        drift = (new - old).pow(2).mean() / old.pow(2).mean().clamp_min(1e-8)
        return heads.loss(tower, built_in) + ANCHOR_WEIGHT * drift

    metrics = train_answers(proxy, Prompter(tokenizer), domains, fe.user_steps, fe.batch_size, PROXY_LM.lr, seed,
                            cell_px, progress, weights=weights, tower_lr=fe.user_lr, extra=(heads, keep_built_in),
                            catalog=catalog)
    frontend.load_state_dict(tower.state_dict())
    frontend.eval()
    acc = heads.accuracy(frontend, MixedStream(list(DOMAINS), seed + 1, cell_px).batch(256))
    return metrics | {"domains": domains, "proxy_lm": PROXY_LM.key(), "cell_accuracy": acc}


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged within each sample, ``(B,)``.

    Averaging per sample (not per token) keeps long captions from drowning one-word answers.
    """
    lg, lab = logits[:, :-1].float(), labels[:, 1:]
    tok = nn.functional.cross_entropy(lg.transpose(1, 2), lab, ignore_index=-100, reduction="none")
    mask = (lab != -100).float()
    return (tok * mask).sum(1) / mask.sum(1).clamp_min(1)


def train_answers(model, prompter: Prompter, domains, steps: int, batch_size: int, lr: float, seed: int,
                  cell_px: int, progress=None, trainable=None, weights=None, tower_lr: float | None = None,
                  extra=None, catalog=NO_DOMAINS) -> dict:
    """Stage B: train ``trainable`` parameters (default: all but the vision tower) on answers only,
    drawing each sample's domain uniformly or in proportion to ``weights`` (one per domain). With
    ``tower_lr`` the vision tower trains too, at that learning rate, and ``extra = (module, loss)`` adds
    ``loss(samples)`` to every step's loss and trains ``module``'s parameters with it (stage A+)."""
    torch.manual_seed(seed)
    tower = model.model.vision_tower
    tower.requires_grad_(tower_lr is not None)
    params = [p for p in (trainable if trainable is not None else model.parameters()) if p.requires_grad]
    tower_ids = {id(p) for p in tower.parameters()}
    groups = [{"params": [p for p in params if id(p) not in tower_ids]}]
    if tower_lr is not None:
        groups.append({"params": [p for p in params if id(p) in tower_ids], "lr": tower_lr})
    if extra is not None:
        groups.append({"params": list(extra[0].parameters())})
        params = params + groups[-1]["params"]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)
    sched = _schedule(opt, steps, max(1, steps // 20))
    stream = MixedStream(domains, seed, cell_px, weights=weights, catalog=catalog)
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
        if extra is not None:
            loss = loss + extra[1](samples)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema = float(loss.detach()) if ema is None else 0.95 * ema + 0.05 * float(loss.detach())
        if progress:
            progress(step + 1, steps, ema)
    model.eval()
    return {"seconds": time.time() - t0, "steps": steps, "final_loss_ema": ema}
