"""DWC, dynamic weight-update compression: what the cloud sends down to a device (pure tensor functions).

The cloud sends a delta (new adapter weights minus what the device holds). Both sides know the tensor
names and shapes, so a payload only carries values. The tensors are taken in sorted-key order and
flattened into one vector ``x`` of ``numel`` values; a payload is two numpy arrays:

``header``  int64 ``(12,)``: format version, number of tensors, numel, flags (1 = select, 2 = quantize),
            bits (2/4/8, or 32 for float32 values), group size (0 if not quantized), kept entries ``k``,
            index code (0 none, 1 bitmap, 2..5 gaps as uint8/16/32/64), the byte lengths of the
            three blob sections (indices, values, scales), and the selection block size
``blob``    uint8: indices + values + scales, concatenated

Selection (``select``) is global over blocks of ``block`` consecutive entries of ``x`` (1 = single
entries; the last block may be shorter): blocks sorted by their energy ``sum(x**2)`` descending, the
smallest prefix holding ``energy`` of ``sum(x**2)`` is kept, capped at ``ceil(max_density * numel /
block)`` blocks, at least one if ``x != 0``. Kept blocks go in ascending order; their block indices are
sent as a zlib'd ``np.packbits`` bitmap or as zlib'd gaps (first index, then differences) in the smallest
unsigned dtype that fits, whichever is smaller, and ``k`` counts the entries they hold. Blocks trade
energy per kept value for index bytes: a block of ``b`` entries costs one index, not ``b``. Without
selection every entry is sent, in order, with no indices.

Values (``quantize``): a midrise uniform quantiser per group of ``group_size`` consecutive kept values,
scale ``s = absmax / 2**(bits-1)`` stored as float16 rounded *up*, ``q = clamp(floor(x/s))`` stored as
``q + 2**(bits-1)`` packed ``8/bits`` per byte, dequantised as ``(q + 0.5) * s``. So
``|x - x_hat| <= s/2`` (up to float32 rounding) with the stored ``s``: ``absmax/2**bits`` up to fp16
rounding, or up to ``2**-25`` more for tiny groups (fp16 subnormals: ``s < 2**-14`` rounds up to a multiple
of ``2**-24``, never to 0). A scale that would overflow fp16 (``|x| > 65504 * 2**(bits-1)``) is refused
(``FlSimError``), as are NaN/inf deltas. Without quantisation values are little-endian float32.
"""

from __future__ import annotations

import math
import zlib
from typing import Literal

import numpy as np
import torch

from pydantic import BaseModel, ConfigDict, Field

from . import FlSimError, PayloadError

VERSION = 2
HEADER_LEN = 12
SELECT, QUANTIZE = 1, 2
GAP_DTYPES = {2: np.dtype("<u1"), 3: np.dtype("<u2"), 4: np.dtype("<u4"), 5: np.dtype("<u8")}
F16_MAX = float(np.finfo(np.float16).max)


class DWCConfig(BaseModel):
    """``[strategy.dwc]``: how the cloud compresses a downlink delta (both switches off = dense fp32)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    select: bool = Field(True, description="keep only the entries holding `energy` of the delta's energy")
    energy: float = Field(0.9, gt=0, le=1, description="target share of sum(delta**2) kept")
    max_density: float = Field(0.05, gt=0, le=1, description="cap on the kept share of entries")
    block: int = Field(1, ge=1, le=4096, description=(
        "select blocks of this many consecutive entries (1 = single entries): fewer index bytes per value"))
    quantize: bool = Field(True, description="quantise kept values")
    bits: Literal[2, 4, 8] = 4
    group_size: int = Field(64, ge=1, description="values per float16 quantisation scale")
    error_feedback: bool = Field(True, description="carry what was not sent into the next round")


def _flatten(tensors: dict[str, torch.Tensor]) -> np.ndarray:
    flat = [tensors[k].detach().cpu().float().reshape(-1).numpy() for k in sorted(tensors)]
    return np.concatenate(flat) if flat else np.zeros(0, np.float32)


def _select(x: np.ndarray, cfg: DWCConfig) -> np.ndarray:
    """Ascending indices of the kept blocks (of ``cfg.block`` consecutive entries; entries if 1)."""
    e = x.astype(np.float64) ** 2
    if cfg.block > 1:
        e = np.add.reduceat(e, np.arange(0, x.size, cfg.block)) if x.size else e
    order = np.argsort(-e, kind="stable")
    cum = np.cumsum(e[order])
    if x.size == 0 or cum[-1] == 0:
        return np.zeros(0, np.int64)
    k = min(int(np.searchsorted(cum, cfg.energy * cum[-1], side="left")) + 1, e.size)
    k = max(1, min(k, math.ceil(cfg.max_density * x.size / cfg.block)))
    return np.sort(order[:k])


def _block_entries(blocks: np.ndarray, block: int, numel: int) -> np.ndarray:
    """Ascending flat indices of the entries of ``blocks`` (ascending block indices)."""
    if block == 1:
        return blocks
    idx = (blocks[:, None] * block + np.arange(block)).reshape(-1)
    return idx[idx < numel]


def _encode_indices(idx: np.ndarray, numel: int) -> tuple[int, bytes]:
    mask = np.zeros(numel, np.uint8)
    mask[idx] = 1
    best = (1, zlib.compress(np.packbits(mask).tobytes(), 9))
    gaps = np.diff(idx, prepend=0)
    top = int(gaps.max()) if gaps.size else 0
    code = next(c for c, dt in GAP_DTYPES.items() if top <= np.iinfo(dt).max)
    gap_bytes = zlib.compress(gaps.astype(GAP_DTYPES[code]).tobytes(), 9)
    return (code, gap_bytes) if len(gap_bytes) < len(best[1]) else best


def _shifts(bits: int) -> np.ndarray:
    return np.arange(8 - bits, -1, -bits, dtype=np.uint8)  # first value in the high bits


def _quantize(v: np.ndarray, bits: int, group: int) -> tuple[bytes, bytes]:
    half, a = 2 ** (bits - 1), np.abs(v.astype(np.float64))
    s = np.maximum.reduceat(a, np.arange(0, v.size, group)) / half if v.size else np.zeros(0)
    if np.any(s > F16_MAX):
        raise FlSimError(f"DWC delta has values up to {a.max():.3g}, too large for float16 scales")
    s16 = s.astype(np.float16)
    low = s16.astype(np.float64) < s
    s16[low] = np.nextafter(s16[low], np.float16(np.inf))  # round up, so that |x| <= half * s16
    se = s16.astype(np.float64)[np.arange(v.size) // group]
    q = np.floor(np.divide(v, se, out=np.zeros_like(se), where=se > 0))
    q = (np.clip(q, -half, half - 1) + half).astype(np.uint8)
    q = np.pad(q, (0, -q.size % (8 // bits))).reshape(-1, 8 // bits)
    return np.bitwise_or.reduce(q << _shifts(bits), axis=1).astype(np.uint8).tobytes(), s16.astype("<f2").tobytes()


def encode(delta: dict[str, torch.Tensor], cfg: DWCConfig) -> dict[str, np.ndarray]:
    """Compress ``delta`` into a ``{"header", "blob"}`` payload (see the module docstring)."""
    x = _flatten(delta)
    numel = x.size
    if not np.isfinite(x).all():
        raise FlSimError("DWC delta contains NaN or inf")
    idx_code, idx_bytes = 0, b""
    block = cfg.block if cfg.select else 1
    if cfg.select:
        blocks = _select(x, cfg)
        idx_code, idx_bytes = _encode_indices(blocks, -(-numel // block))
        x = x[_block_entries(blocks, block, numel)]
    val_bytes, scale_bytes = (_quantize(x, cfg.bits, cfg.group_size) if cfg.quantize
                              else (x.astype("<f4").tobytes(), b""))
    header = [VERSION, len(delta), numel, SELECT * cfg.select + QUANTIZE * cfg.quantize,
              cfg.bits if cfg.quantize else 32, cfg.group_size if cfg.quantize else 0, x.size, idx_code,
              len(idx_bytes), len(val_bytes), len(scale_bytes), block]
    blob = np.frombuffer(idx_bytes + val_bytes + scale_bytes, np.uint8).copy()
    return {"header": np.array(header, np.int64), "blob": blob}


def _inflate(data: bytes, expected: int, what: str) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, expected + 1)
    except zlib.error as e:
        raise PayloadError(f"DWC {what} are not valid zlib data ({e})") from None
    if len(out) != expected or not d.eof or d.unused_data or d.unconsumed_tail:
        raise PayloadError(f"DWC {what} do not inflate to the expected {expected} bytes")
    return out


def _decode_indices(data: bytes, code: int, k: int, numel: int) -> np.ndarray:
    """``k`` ascending indices below ``numel`` (entries, or blocks when selection is by block)."""
    if code == 1:
        bits = np.unpackbits(np.frombuffer(_inflate(data, -(-numel // 8), "index bitmap"), np.uint8))
        if bits[numel:].any() or int(bits.sum()) != k:
            raise PayloadError(f"DWC index bitmap does not hold exactly {k} entries within {numel}")
        return np.flatnonzero(bits[:numel])
    if code not in GAP_DTYPES:
        raise PayloadError(f"DWC unknown index code {code}")
    dt = GAP_DTYPES[code]
    gaps = np.frombuffer(_inflate(data, k * dt.itemsize, "index gaps"), dt)
    if k and (gaps.max() >= numel or (gaps[1:] == 0).any()):
        raise PayloadError("DWC indices are out of range or not strictly increasing")
    idx = np.cumsum(gaps.astype(np.int64))
    if k and idx[-1] >= numel:
        raise PayloadError(f"DWC index {int(idx[-1])} is out of range (numel {numel})")
    return idx


def _dequantize(val: bytes, scales: bytes, bits: int, group: int, k: int) -> np.ndarray:
    s = np.frombuffer(scales, "<f2").astype(np.float32)
    if not np.isfinite(s).all() or (s < 0).any():
        raise PayloadError("DWC scales contain NaN, inf or negative values")
    q = np.frombuffer(val, np.uint8)[:, None] >> _shifts(bits) & np.uint8(2 ** bits - 1)
    q = q.reshape(-1)[:k].astype(np.float32) - 2 ** (bits - 1)
    return (q + 0.5) * s[np.arange(k) // group]


def decode(payload: dict[str, np.ndarray], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The delta in ``payload`` as float32 tensors shaped like ``like`` (zeros where not sent)."""
    if not isinstance(payload, dict) or set(payload) != {"header", "blob"}:
        keys = sorted(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
        raise PayloadError(f"DWC payload has keys {keys}, expected ['blob', 'header']")
    h, blob = payload["header"], payload["blob"]
    if not isinstance(h, np.ndarray) or h.dtype != np.int64 or h.shape != (HEADER_LEN,):
        raise PayloadError(f"DWC header must be int64 of shape ({HEADER_LEN},)")
    if not isinstance(blob, np.ndarray) or blob.dtype != np.uint8 or blob.ndim != 1:
        raise PayloadError("DWC blob must be a 1-D uint8 array")
    version, n_t, numel, flags, bits, group, k, code, n_idx, n_val, n_sc, block = (int(v) for v in h)
    names = sorted(like)
    sizes = [like[n].numel() for n in names]
    if version != VERSION:
        raise PayloadError(f"DWC payload version {version}, expected {VERSION}")
    if n_t != len(names) or numel != sum(sizes):
        raise PayloadError(f"DWC payload is for {n_t} tensors / {numel} values, not {len(names)} / {sum(sizes)}")
    if flags not in range(4):
        raise PayloadError(f"DWC unknown flags {flags}")
    select, quantize = bool(flags & SELECT), bool(flags & QUANTIZE)
    if (quantize and (bits not in (2, 4, 8) or group < 1)) or (not quantize and (bits != 32 or group != 0)):
        raise PayloadError(f"DWC bad bits {bits} / group size {group}")
    if not (0 <= k <= numel if select else k == numel) or (not select and (code or n_idx)):
        raise PayloadError(f"DWC bad kept count {k} / index section for select={select}")
    if not 1 <= block <= 4096 or (not select and block != 1):
        raise PayloadError(f"DWC bad block size {block} for select={select}")
    want_val, want_sc = (-(-k * bits // 8), 2 * -(-k // group)) if quantize else (4 * k, 0)
    if (n_val, n_sc) != (want_val, want_sc) or n_idx < 0 or n_idx + n_val + n_sc != blob.size:
        raise PayloadError(f"DWC blob has {blob.size} bytes; sections {n_idx}/{n_val}/{n_sc}, "
                           f"expected values {want_val} and scales {want_sc}")
    raw = blob.tobytes()
    idx = None
    if select:
        n_blocks = -(-numel // block)
        full = k // block + (k % block > 0)  # blocks holding k entries (only the last block may be short)
        idx = _block_entries(_decode_indices(raw[:n_idx], code, full, n_blocks), block, numel)
        if idx.size != k:
            raise PayloadError(f"DWC {full} blocks of {block} hold {idx.size} entries, header says {k}")
    val_bytes, sc_bytes = raw[n_idx:n_idx + n_val], raw[n_idx + n_val:]
    vals = _dequantize(val_bytes, sc_bytes, bits, group, k) if quantize else np.frombuffer(val_bytes, "<f4")
    if not np.isfinite(vals).all():
        raise PayloadError("DWC values contain NaN or inf")
    x = np.zeros(numel, np.float32)
    x[idx if select else slice(None)] = vals
    parts = dict(zip(names, np.split(x, np.cumsum(sizes)[:-1])))
    return {n: torch.from_numpy(parts[n]).reshape(t.shape).to(t.device) for n, t in like.items()}


def payload_nbytes(payload: dict[str, np.ndarray]) -> int:
    """Raw bytes of a payload's arrays (before Flower's framing)."""
    return sum(int(a.nbytes) for a in payload.values())


def dense_nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of the same tensors sent dense in float32."""
    return 4 * sum(t.numel() for t in tensors.values())


class ErrorFeedback:
    """Sender-side residual memory: what compression dropped is added to the next round's delta."""

    def __init__(self, cfg: DWCConfig):
        self.cfg = cfg
        self.residual: dict[str, torch.Tensor] = {}

    def step(self, delta: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
        """Compress ``delta`` (plus the residual); returns ``(payload, sent)``, ``sent`` = what the device gets."""
        if self.residual and {k: r.shape for k, r in self.residual.items()} != {k: v.shape for k, v in delta.items()}:
            raise FlSimError("DWC error-feedback residual does not match the delta's tensors")
        x = {k: v.detach().float() + self.residual[k].to(v.device) if self.cfg.error_feedback and self.residual
             else v.detach().float() for k, v in delta.items()}
        payload = encode(x, self.cfg)
        sent = decode(payload, x)
        self.residual = {k: x[k] - sent[k] if self.cfg.error_feedback else torch.zeros_like(x[k]) for k in x}
        return payload, sent

    def state(self) -> dict[str, torch.Tensor]:
        """The residual as ``name -> tensor`` (contiguous CPU float32, safetensors-friendly)."""
        return {k: v.detach().cpu().float().contiguous().clone() for k, v in self.residual.items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore a residual saved by ``state``."""
        self.residual = {k: v.detach().float().clone() for k, v in tensors.items()}


def apply(weights: dict[str, torch.Tensor], sent: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights + sent`` as a new dict (tensors missing from ``sent`` are copied unchanged)."""
    if unknown := set(sent) - set(weights):
        raise FlSimError(f"DWC update has unknown tensors {sorted(unknown)}")
    return {k: w + sent[k].to(w) if k in sent else w.clone() for k, w in weights.items()}
