"""UTS, uncertainty-guided token sampling: what a device uploads to the cloud (pure tensor functions).

Stage 1 (samples): every sample the device sees gets an uncertainty score from its own generated answer
(``1 - confidence``, where confidence is the product of the max token probabilities, as CD-CCA does;
or the mean token ``entropy``; or ``1 - margin``; or ``random`` scores for the equal-budget ablation).
The most uncertain samples are kept, at most ``ceil(budget * n)`` of them per round, and only those above
``min_uncertainty`` when it is set (e.g. 0.5 = "confidence below 0.5").

Two corrections to the paper's score, both on by default and both switchable for ablations:

- ``normalize``: confidence per answer token (geometric mean of the max probabilities) instead of the
  product. The paper's VQA answers are short; here a caption has ~12 tokens, and the product ranked
  captions as the least sure samples almost always (80-100 % of the picks on every shifted domain and
  tier were captions, which VQA accuracy does not count: docs/notes.md).
- ``stratify``: the budget is shared by question type (the question's first two words: "how many",
  "is there", ..., what the device itself asked, as VQA datasets define question types) in proportion
  to how often each type was asked, and samples are ranked within their type. One global ranking lets
  one hard type take the whole budget.

Stage 2 (tokens): each visual token of a kept sample (one per grid cell, from the frozen front-end that
device and cloud share) gets an uncertainty score: ``mc_dropout`` = variance of the device projector's
output over dropout passes on the token (CD-CCA), or ``novelty`` = squared distance to the front-end's
mean token (cheap: no extra passes). The most uncertain ``keep_tokens`` share of each sample is kept.

Dropped tokens are not sent at all. An upload is a few numpy arrays:

``tokens``      int8 ``(kept tokens, D)``, the kept visual tokens of every kept sample, in order, with
``scales``      float16 ``(kept tokens,)`` per-token absmax scales (``token_bits = 8``; ``16`` sends float16
                tokens and no scales; ``4`` sends uint8 ``(ceil(kept tokens * D / 2),)``, two values
                ``q + 8`` per byte, high nibble first, ``q`` in ``[-7, 7]``, zero padding)
``token_mask``  uint8, ``np.packbits`` of the ``(samples, N)`` keep mask
``questions``   uint8/uint16/uint32 token ids of every kept sample's question, concatenated
``q_len``       uint8 ``(samples,)`` question lengths
``images``      uint8 ``(samples, H, W, 3)``, instead of the first two, for the raw-image baseline

The cloud fills dropped tokens with the reference (mean) token before running a model on them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fl_sim import FlSimError, PayloadError, ceil_share
from fl_sim.config import UTSConfig  # noqa: F401 - the [strategy.uts] section, also named here

MAX_TOKEN_VALUE = 1e4  # front-end features are O(10); anything this large is corrupt


def sample_uncertainty(stats: dict[str, np.ndarray], method: str, rng: np.random.Generator,
                       normalize: bool = False) -> np.ndarray:
    """Per-sample uncertainty (higher = less sure) from ``answer_with_stats`` statistics.

    ``normalize`` scores ``confidence`` per answer token (``token_confidence``) instead of the product.
    """
    n = len(stats["confidence"])
    if method == "confidence":
        return 1.0 - np.asarray(stats["token_confidence" if normalize else "confidence"], float)
    if method == "entropy":
        return np.asarray(stats["entropy"], float)
    if method == "margin":
        return 1.0 - stats["margin"]
    if method in ("random", "off"):
        return rng.random(n)
    raise FlSimError(f"unknown UTS sample method {method!r}; allowed: random, confidence, entropy, margin")


def question_type(question: str) -> str:
    """A question's type: its first two words ("how many", "is there", "what colour", "describe the")."""
    return " ".join(str(question).split()[:2])


def _shares(sizes: list[int], k: int) -> list[int]:
    """Split ``k`` over groups in proportion to ``sizes`` (largest remainder, ties to the earlier group)."""
    total = sum(sizes)
    raw = [k * s / total for s in sizes]
    out = [min(s, math.floor(r)) for s, r in zip(sizes, raw)]
    for i in sorted(range(len(sizes)), key=lambda i: (-(raw[i] - math.floor(raw[i])), i)):
        if sum(out) >= k:
            break
        if out[i] < sizes[i]:
            out[i] += 1
    return out


def select_samples(uncertainty: np.ndarray, budget: float, min_uncertainty: float | None = None,
                   groups=None, power: float | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices (ascending) of the most uncertain samples: at most ``ceil(budget * n)``, ties by index.

    With ``groups`` (one label per sample, e.g. ``question_type``), the ``ceil(budget * n)`` slots are
    shared by group in proportion to group size (largest remainder) and filled within each group.
    With ``power`` (beta), samples are drawn without replacement with probability proportional to
    ``uncertainty ** beta`` (Gumbel top-k with ``rng``) instead of taking the top: stochastic batch
    acquisition, which keeps a batch from being all outliers of one kind.
    """
    u = np.asarray(uncertainty, float)
    k = min(len(u), ceil_share(budget, len(u)))
    key = u  # samples are taken by key, descending
    if power is not None:
        if rng is None:
            raise FlSimError("select_samples: power sampling needs an rng")
        key = power * np.log(np.clip(u, 1e-12, None)) + rng.gumbel(size=len(u))
    if groups is None:
        order = np.lexsort((np.arange(len(u)), -key))[:k]  # by key desc, then index asc
    else:
        groups = np.asarray(groups)
        if groups.shape != u.shape:
            raise FlSimError(f"select_samples: {len(groups)} group labels for {len(u)} samples")
        labels = list(dict.fromkeys(groups.tolist()))  # first-seen order: deterministic
        members = [np.flatnonzero(groups == g) for g in labels]
        order = np.concatenate([m[np.lexsort((m, -key[m]))][:share] for m, share in
                                zip(members, _shares([len(m) for m in members], k))] or [np.zeros(0, int)])
    if min_uncertainty is not None:
        order = order[u[order] > min_uncertainty]
    return np.sort(order).astype(np.int64)


def stage1(stats: dict[str, np.ndarray], questions, method: str, budget: float, rng: np.random.Generator,
           normalize: bool = False, stratify: bool = False, power: float | None = None,
           min_uncertainty: float | None = None) -> np.ndarray:
    """Stage 1 as configured (``UTSConfig`` fields): indices of the samples to upload.

    ``"off"`` keeps every sample; ``"random"`` is plain random at the same budget (no strata, no power, no threshold).
    """
    if method == "off":
        return np.arange(len(stats["confidence"]), dtype=np.int64)
    unc = sample_uncertainty(stats, method, rng, normalize)
    scored = method != "random"
    groups = [question_type(q) for q in questions] if stratify and scored else None
    return select_samples(unc, budget, min_uncertainty if scored else None, groups, power if scored else None, rng)


@torch.no_grad()
def token_uncertainty_mc(connect, vis: torch.Tensor, passes: int, p: float, generator: torch.Generator,
                         groups: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, N)``: variance over ``passes`` dropout masks of ``connect(dropout(vis))`` (the model's connector:
    ``(B, N, D)`` visual tokens to ``(B, M, D')`` embeddings), mean over channels; with ``groups`` (``(N,)``,
    the embedding each token feeds, when the connector merges tokens), each token scores as its embedding."""
    outs = []  # masks drawn on the CPU: the same on any device
    for _ in range(passes):
        keep = (torch.rand(vis.shape, generator=generator) >= p).to(vis.dtype) / (1 - p)
        outs.append(connect(vis * keep).float().cpu())
    scores = torch.stack(outs).var(0, unbiased=False).mean(-1)
    return scores if groups is None else scores[:, groups]


def token_uncertainty_novelty(vis: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(B, N)``: mean squared distance of each token to the reference (mean) token."""
    return ((vis - reference) ** 2).mean(-1)


def select_tokens(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """Boolean ``(B, N)`` mask keeping the ``ceil(keep * N)`` highest-scoring tokens of each sample."""
    b, n = scores.shape
    k = max(1, min(n, ceil_share(keep, n)))
    top = scores.topk(k, dim=1).indices
    return torch.zeros(b, n, dtype=torch.bool).scatter_(1, top, True)


REGION_FILL = 128  # the value of an image's pixels outside its uploaded regions (the middle of the range)


def region_mask(token_mask: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> np.ndarray:
    """``(B, height, width)`` bool: the pixels inside the regions (``boxes``: ``(N, 4)`` top, left, bottom,
    right as shares of the image, ``families.Family.token_boxes``) of each sample's kept tokens
    (``token_mask``: ``(B, N)``); a region covers every pixel it touches."""
    eps = 1e-4  # an edge a rounding error off a pixel boundary is on it (28.0000019 is pixel 28, not 29)
    top = torch.floor(boxes[:, 0].double() * height + eps).long()
    left = torch.floor(boxes[:, 1].double() * width + eps).long()
    bottom = torch.ceil(boxes[:, 2].double() * height - eps).long().clamp(max=height)
    right = torch.ceil(boxes[:, 3].double() * width - eps).long().clamp(max=width)
    rows, cols = torch.arange(height), torch.arange(width)
    inside = (((rows[None, :] >= top[:, None]) & (rows[None, :] < bottom[:, None]))[:, :, None]
              & ((cols[None, :] >= left[:, None]) & (cols[None, :] < right[:, None]))[:, None, :])  # (N, H, W)
    return (token_mask.float() @ inside.reshape(len(boxes), -1).float() > 0).reshape(-1, height, width).numpy()


def encode_upload(question_ids: list[list[int]], vis: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                  images: np.ndarray | None = None, token_bits: int = 8,
                  pixel_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The upload arrays for kept samples: visual tokens (``vis`` with ``mask``), raw ``images``, or the
    pixels of ``images`` inside ``pixel_mask`` (``(B, H, W)`` bool: the regions of the kept tokens of a model
    whose tower the cloud's teacher does not share; ``region_mask``) with the mask as packed bits.

    With ``token_bits = 8`` each token is sent as int8 with a float16 absmax scale (error per value at
    most half a step, ``scale / 2``, with ``scale = absmax / 127``); with ``4``, two values per byte and
    ``scale = absmax / 7``; with ``2``, four values per byte (``"tokens_2bit"``), midrise levels
    ``(c - 1.5) * scale`` for codes ``c`` in 0..3 and ``scale = absmax / 1.5``.
    """
    lens = [len(q) for q in question_ids]
    if any(ln > 255 for ln in lens):
        raise FlSimError("a question longer than 255 tokens cannot be uploaded")
    flat = np.concatenate([np.asarray(q, np.int64) for q in question_ids]) if question_ids else np.zeros(0, np.int64)
    top = flat.max() if flat.size else 0
    qdt = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32  # a 150k-token tokenizer fits
    out = {"questions": flat.astype(qdt), "q_len": np.asarray(lens, np.uint8)}
    if images is not None and pixel_mask is not None:
        out["region_mask"] = np.packbits(np.asarray(pixel_mask, bool).ravel())
        out["region_pixels"] = np.ascontiguousarray(np.asarray(images, np.uint8)[np.asarray(pixel_mask, bool)]).ravel()
        return out
    if images is not None:
        out["images"] = np.ascontiguousarray(images, dtype=np.uint8)
        return out
    if mask is None:
        mask = torch.ones(vis.shape[:2], dtype=torch.bool)
    kept = vis[mask].float()
    if token_bits == 16:
        out["tokens"] = kept.to(torch.float16).numpy()
    elif token_bits == 2:
        scale = (kept.abs().amax(-1) / 1.5).to(torch.float16).float()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        code = (torch.clamp(torch.floor(kept / scale[:, None]), -2, 1) + 2).to(torch.uint8).numpy()
        out["tokens_2bit"] = _pack_crumbs(code.ravel())
        out["scales"] = scale.to(torch.float16).numpy()
    else:
        top = 2 ** (token_bits - 1) - 1
        scale = (kept.abs().amax(-1) / top).to(torch.float16).float()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round(kept / scale[:, None]), -top, top).to(torch.int8).numpy()
        out["tokens"] = q if token_bits == 8 else _pack_nibbles(q.ravel() + 8)
        out["scales"] = scale.to(torch.float16).numpy()
    out["token_mask"] = np.packbits(mask.numpy().astype(np.uint8).ravel())
    return out


def _pack_nibbles(v: np.ndarray) -> np.ndarray:
    """Values in ``[0, 15]`` two per byte, high nibble first (a last odd value gets a zero low nibble)."""
    v = np.append(v.astype(np.uint8), np.uint8(0)) if v.size % 2 else v.astype(np.uint8)
    return (v[0::2] << 4) | v[1::2]


def _pack_crumbs(v: np.ndarray) -> np.ndarray:
    """Values in ``[0, 3]`` four per byte, highest bits first (the last byte padded with zero codes)."""
    v = np.concatenate([v.astype(np.uint8), np.zeros(-v.size % 4, np.uint8)]).reshape(-1, 4)
    return (v[:, 0] << 6) | (v[:, 1] << 4) | (v[:, 2] << 2) | v[:, 3]


TOKEN_ARRAYS = {16: ("tokens", np.float16), 8: ("tokens", np.int8), 4: ("tokens", np.uint8),
                2: ("tokens_2bit", np.uint8)}


def decode_upload(arrays: dict[str, np.ndarray], n_tokens: int, dim: int, vocab: int, reference: torch.Tensor | None,
                  image_shape: tuple[int, ...] | None = None, max_samples: int | None = None,
                  token_bits: int | None = None, max_tokens: int | None = None) -> dict:
    """Validate an upload and rebuild ``{"questions", "vis", "mask"}`` (or ``"images"``).

    Dropped tokens are filled with ``reference``. Raises ``PayloadError`` naming what is wrong. What the
    device was asked for is checked before anything is allocated: at most ``max_samples`` samples, tokens
    encoded in ``token_bits``, at most ``max_tokens`` kept tokens per sample.
    """
    def need(key, dtypes):
        if key not in arrays:
            raise PayloadError(f"upload lacks {key!r}")
        a = np.asarray(arrays[key])
        if a.dtype not in dtypes:
            raise PayloadError(f"upload {key!r} has dtype {a.dtype}, expected {'/'.join(map(str, dtypes))}")
        return a

    q_len = need("q_len", (np.uint8,)).astype(np.int64)
    if max_samples is not None and q_len.size > max_samples:
        raise PayloadError(f"upload holds {q_len.size} samples, more than the {max_samples} the device was asked for")
    if (q_len == 0).any():
        raise PayloadError("upload holds an empty question")
    if token_bits is not None and "images" not in arrays:
        key, dtype = TOKEN_ARRAYS[token_bits]
        if key not in arrays or np.asarray(arrays[key]).dtype != dtype:
            raise PayloadError(f"upload tokens are not the {token_bits}-bit encoding the device was asked for")
    flat = need("questions", (np.uint8, np.uint16, np.uint32)).astype(np.int64)
    if q_len.ndim != 1 or flat.ndim != 1 or q_len.sum() != flat.size:
        raise PayloadError(f"upload questions hold {flat.size} ids but q_len sums to {int(q_len.sum())}")
    if flat.size and flat.max() >= vocab:
        raise PayloadError(f"upload question id {int(flat.max())} outside the vocabulary ({vocab})")
    b = len(q_len)
    questions = [q.tolist() for q in np.split(flat, np.cumsum(q_len)[:-1])] if b else []
    if "region_mask" in arrays:  # the pixels of the kept tokens' regions, the rest REGION_FILL
        if image_shape is None or "images" in arrays:
            raise PayloadError("upload holds image regions, but no image shape was given (or whole images too)")
        h, w, c = image_shape
        packed = need("region_mask", (np.uint8,))
        if packed.shape != (math.ceil(b * h * w / 8),):
            raise PayloadError(f"upload region_mask has shape {packed.shape}, expected {(math.ceil(b * h * w / 8),)}")
        bits = np.unpackbits(packed)
        if bits[b * h * w:].any():
            raise PayloadError("upload region_mask has non-zero padding")
        where = bits[:b * h * w].astype(bool).reshape(b, h, w)
        pixels = need("region_pixels", (np.uint8,))
        if pixels.shape != (int(where.sum()) * c,):
            raise PayloadError(f"upload region_pixels hold {pixels.size} values, its mask keeps {int(where.sum()) * c}")
        img = np.full((b, h, w, c), REGION_FILL, np.uint8)
        img[where] = pixels.reshape(-1, c)
        return {"questions": questions, "images": img, "regions": where}
    if "images" in arrays:
        if image_shape is None:
            raise PayloadError("upload holds raw images, but no image shape was given to check them against")
        img = need("images", (np.uint8,))
        if img.shape != (b, *image_shape):
            raise PayloadError(f"upload images have shape {img.shape}, expected {(b, *image_shape)}")
        return {"questions": questions, "images": img}
    packed = need("token_mask", (np.uint8,))
    if packed.size != math.ceil(b * n_tokens / 8):
        raise PayloadError(f"upload token_mask has {packed.size} bytes, expected {math.ceil(b * n_tokens / 8)}")
    mask = torch.from_numpy(np.unpackbits(packed)[:b * n_tokens].astype(bool).reshape(b, n_tokens))
    kept = int(mask.sum())
    if max_tokens is not None and b and int(mask.sum(1).max()) > max_tokens:
        raise PayloadError(f"upload keeps {int(mask.sum(1).max())} tokens of a sample, more than the {max_tokens} "
                           "the device was asked for")
    if "tokens_2bit" in arrays:  # four codes per byte, levels (c - 1.5) * scale
        if "tokens" in arrays:
            raise PayloadError("upload holds both 'tokens' and 'tokens_2bit'")
        packed2 = need("tokens_2bit", (np.uint8,))
        if packed2.shape != (math.ceil(kept * dim / 4),):
            raise PayloadError(f"upload 2-bit tokens have shape {packed2.shape}, "
                               f"expected {(math.ceil(kept * dim / 4),)}")
        codes = np.stack([packed2 >> 6, (packed2 >> 4) & 3, (packed2 >> 2) & 3, packed2 & 3], 1).ravel()
        if codes[kept * dim:].any():
            raise PayloadError("upload 2-bit tokens have non-zero padding")
        tokens = (codes[:kept * dim].astype(np.float16) - np.float16(1.5)).reshape(kept, dim)
    else:
        tokens = need("tokens", (np.float16, np.int8, np.uint8))
    if tokens.dtype == np.uint8:  # 4-bit: two values per byte
        if tokens.shape != (math.ceil(kept * dim / 2),):
            raise PayloadError(f"upload 4-bit tokens have shape {tokens.shape}, "
                               f"expected {(math.ceil(kept * dim / 2),)}")
        nib = np.stack([tokens >> 4, tokens & 15], 1).ravel()
        if (nib[:kept * dim] == 0).any() or nib[kept * dim:].any():
            raise PayloadError("upload 4-bit tokens hold a value outside [-7, 7] or non-zero padding")
        tokens = (nib[:kept * dim].astype(np.int8) - 8).reshape(kept, dim)
    if tokens.shape != (kept, dim):
        raise PayloadError(f"upload tokens have shape {tokens.shape}, expected {(kept, dim)}")
    quantized = tokens.dtype == np.int8 or "tokens_2bit" in arrays
    if quantized != ("scales" in arrays):
        raise PayloadError("upload scales must come with int8/4-bit/2-bit tokens and only with them")
    if tokens.dtype == np.int8 and tokens.size and tokens.min() < -127:
        raise PayloadError("upload int8 tokens hold -128, outside [-127, 127]")
    tokens = tokens.astype(np.float32)
    if quantized:
        scales = need("scales", (np.float16,))
        if scales.shape != (len(tokens),):
            raise PayloadError(f"upload scales have shape {scales.shape}, expected {(len(tokens),)}")
        if not (np.isfinite(scales) & (scales > 0)).all():
            raise PayloadError("upload scales must be finite and > 0")
        tokens = tokens * scales.astype(np.float32)[:, None]
    if not np.isfinite(tokens).all():
        raise PayloadError("upload tokens or scales contain NaN or inf")
    if tokens.size and np.abs(tokens).max() > MAX_TOKEN_VALUE:
        raise PayloadError(f"upload token values exceed {MAX_TOKEN_VALUE:g} (not front-end features)")
    vis = (reference.expand(b, n_tokens, dim).clone() if reference is not None
           else torch.zeros(b, n_tokens, dim))
    vis[mask] = torch.from_numpy(tokens)
    return {"questions": questions, "vis": vis, "mask": mask}
