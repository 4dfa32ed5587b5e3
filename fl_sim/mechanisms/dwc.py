"""DWC, dynamic weight-update compression: what the cloud sends down to a device (pure tensor functions).

The cloud sends a delta (new adapter weights minus what the device holds). Both sides know the tensor
names and shapes, so a payload only carries values. The tensors are taken in sorted-key order and
flattened into one vector ``x`` of ``numel`` values. A payload is one ``bytes`` string (format 3):

``header``   the version byte, then unsigned LEB128 varints: number of tensors, numel, flags (1 = select,
             2 = quantize), bits (2/3/4/8, or 32 for float32 values), group size (0 if not quantized),
             kept entries ``k``, selection block size, index code (0 none, 1 zlib'd bitmap, 2 Rice-coded
             gaps), index Rice parameter, magnitude Rice parameter, and the byte lengths of the index and
             value sections; the scale section is the rest
``indices``  the kept blocks (see below)
``values``   float32 little-endian, or the quantised bit stream (see below)
``scales``   when quantized: ``lo`` then one ``hi`` per group of ``group size`` kept values, float16

Selection (``select``) is global over blocks of ``block`` consecutive entries of ``x`` (1 = single
entries; the last block may be shorter): blocks sorted by their energy ``sum(x**2)`` descending, the
smallest prefix holding ``energy`` of ``sum(x**2)`` is kept, capped at ``ceil(max_density * numel /
block)`` blocks, at least one if ``x != 0``. Kept blocks go in ascending order and ``k`` counts the
entries they hold. Their block indices are sent as a zlib'd ``np.packbits`` bitmap or as Rice-coded gaps
(``index[0]``, then ``index[i] - index[i-1] - 1``; Rice code with parameter ``r``: ``g >> r`` ones, a
zero, then the low ``r`` bits of ``g``, most significant first), whichever is smaller. Kept entries sit
at positions a device cannot predict, so the gaps are close to geometric and a Rice code is within a few
per cent of their entropy. Blocks trade energy per kept value for index bytes. Without selection every
entry is sent, in order, with no indices.

Seeded selection (``selection = "random"``, index code 3): entry ``i`` is kept iff ``mix64((seed + i +
1) * 0x9E3779B97F4A7C15) < t`` (64-bit wrap-around: the ``i``-th output of Steele et al.'s SplitMix64
seeded with ``seed``; ``mix64`` is its finaliser), with ``t = floor(max_density * 2**64)``; the index
section is ``seed`` and ``t``, two little-endian uint64 (16 bytes, whatever ``k``). The device
regenerates the positions, so a kept value costs only its value bits; the sender picks ``seed`` (a new
one per payload), and can train only those entries beforehand (``sparse_train``, no probe needed).
Values are then quantised without the ``lo`` offset (kept entries are not the largest).

Values (``quantize``): sign and magnitude. Kept entries are the largest, so their magnitudes lie in
``[lo, hi]`` with ``lo`` (the smallest kept ``|x|``, float16 rounded *down*) well above 0; each group of
``group_size`` consecutive kept values has its own ``hi`` (the group's largest ``|x|``, float16 rounded
*up*). The magnitude ``|x| - lo`` is quantised midrise with ``2**(bits-1)`` levels of width ``s = (hi -
lo) / 2**(bits-1)``, ``m = clamp(floor((|x| - lo) / s))``, and dequantised as ``sign * (lo + (m + 0.5) *
s)``, so ``|x - x_hat| <= s / 2`` (up to float rounding) with the stored scales. The stream holds the
``k`` sign bits (1 = negative), then the ``k`` magnitudes, Rice-coded with parameter ``r`` and the
unary part truncated at its largest possible value (``r = bits - 1`` is plain fixed-width), then zero
padding to a byte. Without selection ``lo = 0``. A delta with ``|x| > 65504`` (float16 overflow) is
refused (``FlSimError``), as are NaN/inf deltas. Without quantisation values are little-endian float32.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from fl_sim import FlSimError, PayloadError, ceil_share
from fl_sim.config import DWCConfig

VERSION = 3
SELECT, QUANTIZE = 1, 2
BITMAP, RICE, SEEDED = 1, 2, 3
FIELDS = ("tensors", "numel", "flags", "bits", "group", "k", "block", "index_code", "index_r", "mag_r",
          "index_bytes", "value_bytes")
F16_MAX = float(np.finfo(np.float16).max)
MAX_RICE_R = 40


def flatten(tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """Every tensor's values in one 1-D float32 array, tensors in name order (how payloads index entries)."""
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
    k = max(1, min(k, ceil_share(cfg.max_density, x.size / cfg.block)))
    return np.sort(order[:k])


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


GOLDEN = 0x9E3779B97F4A7C15


def seeded_entries(seed: int, threshold: int, numel: int) -> np.ndarray:
    """Ascending indices ``i < numel`` with ``mix64((seed + i + 1) * golden) < threshold`` (module docstring)."""
    with np.errstate(over="ignore"):
        h = _mix64((np.arange(numel, dtype=np.uint64) + np.uint64((int(seed) + 1) % 2**64)) * np.uint64(GOLDEN))
    return np.flatnonzero(h < np.uint64(threshold))


def _need_seed(seed: int | None) -> int:
    if seed is None:
        raise FlSimError('DWC selection = "random" needs a seed, a new one per payload')
    return int(seed)


def _threshold(density: float) -> int:
    return min(int(density * 2**64), 2**64 - 1)


def train_mask(scores: dict[str, torch.Tensor], cfg: DWCConfig, seed: int | None = None) -> dict[str, torch.Tensor]:
    """Bool masks (same keys and shapes as ``scores``) of the entries a payload under ``cfg`` would keep if
    ``scores`` were the delta and ``energy`` were 1: the ``max_density`` share of entries (in blocks of
    ``block``) with the largest ``scores**2``; with ``selection = "random"``, the entries the payload of
    ``seed`` keeps (``scores`` only give the shapes). All entries when ``select`` is off."""
    x = flatten(scores)
    keep = np.zeros(x.size, bool)
    if cfg.select and cfg.selection == "random":
        keep[seeded_entries(_need_seed(seed), _threshold(cfg.max_density), x.size)] = True
    elif cfg.select:
        keep[_block_entries(_select(x, cfg.model_copy(update={"energy": 1.0})), cfg.block, x.size)] = True
    else:
        keep[:] = True
    out, pos = {}, 0
    for k in sorted(scores):
        n = scores[k].numel()
        out[k] = torch.from_numpy(keep[pos:pos + n].copy()).reshape(scores[k].shape)
        pos += n
    return out


def _block_entries(blocks: np.ndarray, block: int, numel: int) -> np.ndarray:
    """Ascending flat indices of the entries of ``blocks`` (ascending block indices)."""
    if block == 1:
        return blocks
    idx = (blocks[:, None] * block + np.arange(block)).reshape(-1)
    return idx[idx < numel]


# ---------------------------------------------------------------- bit-level codes
def _varints(values) -> bytes:
    out = bytearray()
    for v in values:
        v = int(v)
        while True:
            out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
            v >>= 7
            if not v:
                break
    return bytes(out)


def _read_varints(data: bytes, pos: int, n: int) -> tuple[list[int], int]:
    out = []
    for _ in range(n):
        v = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise PayloadError("DWC header is truncated or has an oversized field")
            b = data[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out.append(v)
    return out, pos


def _rice_lengths(v: np.ndarray, r: int, qmax: int | None) -> np.ndarray:
    q = v >> r
    return q + (1 if qmax is None else (q < qmax)) + r


def _rice_bits(v: np.ndarray, r: int, qmax: int | None = None) -> np.ndarray:
    """Rice code of non-negative ``v`` as a 0/1 uint8 array (unary part truncated at ``qmax`` if given)."""
    v = v.astype(np.int64)
    q, lens = v >> r, _rice_lengths(v, r, qmax)
    starts = np.cumsum(lens) - lens
    bits = np.zeros(int(lens.sum()), np.uint8)
    if n_ones := int(q.sum()):
        bits[np.repeat(starts, q) + np.arange(n_ones) - np.repeat(np.cumsum(q) - q, q)] = 1
    rem = starts + lens - r
    for j in range(r):
        bits[rem + j] = (v >> (r - 1 - j)) & 1
    return bits


def _best_rice(v: np.ndarray, rs, qmax=lambda r: None) -> int:
    """The Rice parameter in ``rs`` giving the shortest code of ``v``."""
    return min(rs, key=lambda r: (int(_rice_lengths(v, r, qmax(r)).sum()), r))


def _rice_decode(bits: str, n: int, r: int, qmax: int | None, what: str,
                 limit: int | None = None) -> tuple[np.ndarray, int]:
    """``n`` Rice-coded values from the '0'/'1' string ``bits``, and the number of bits read; a value above
    ``limit`` is malformed (an unbounded unary run would otherwise overflow int64)."""
    out, pos, end = [], 0, len(bits)
    for _ in range(n):
        z = bits.find("0", pos) if qmax is None else bits.find("0", pos, pos + qmax)
        if z >= 0:
            q, pos = z - pos, z + 1
        elif qmax is None or pos + qmax > end:
            raise PayloadError(f"DWC {what} are truncated")
        else:
            q, pos = qmax, pos + qmax
        if pos + r > end:
            raise PayloadError(f"DWC {what} are truncated")
        out.append(q << r | (int(bits[pos:pos + r], 2) if r else 0))
        if limit is not None and out[-1] > limit:
            raise PayloadError(f"DWC {what} hold {out[-1]}, above {limit}")
        pos += r
    return np.array(out, np.int64), pos


def _bit_string(data: bytes) -> str:
    return (np.unpackbits(np.frombuffer(data, np.uint8)) + 48).tobytes().decode()


def _encode_indices(idx: np.ndarray, numel: int) -> tuple[int, int, bytes]:
    """``(code, rice r, bytes)``: the cheaper of a zlib'd bitmap and Rice-coded gaps."""
    gaps = np.diff(idx, prepend=-1) - 1
    r = _best_rice(gaps, range(MAX_RICE_R + 1))
    rice = np.packbits(_rice_bits(gaps, r)).tobytes()
    mask = np.zeros(numel, np.uint8)
    mask[idx] = 1
    bitmap = zlib.compress(np.packbits(mask).tobytes(), 9)
    return (RICE, r, rice) if len(rice) <= len(bitmap) else (BITMAP, 0, bitmap)


def _inflate(data: bytes, expected: int, what: str) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, expected + 1)
    except zlib.error as e:
        raise PayloadError(f"DWC {what} are not valid zlib data ({e})") from None
    if len(out) != expected or not d.eof or d.unused_data or d.unconsumed_tail:
        raise PayloadError(f"DWC {what} do not inflate to the expected {expected} bytes")
    return out


def _decode_indices(data: bytes, code: int, r: int, k: int, numel: int) -> np.ndarray:
    """``k`` ascending indices below ``numel`` (entries, or blocks when selection is by block)."""
    if code == BITMAP:
        bits = np.unpackbits(np.frombuffer(_inflate(data, -(-numel // 8), "index bitmap"), np.uint8))
        if bits[numel:].any() or int(bits.sum()) != k:
            raise PayloadError(f"DWC index bitmap does not hold exactly {k} entries within {numel}")
        return np.flatnonzero(bits[:numel])
    if code != RICE:
        raise PayloadError(f"DWC unknown index code {code}")
    gaps, used = _rice_decode(_bit_string(data), k, r, None, "index gaps", limit=numel)
    if len(data) != -(-used // 8):
        raise PayloadError(f"DWC index section has {len(data)} bytes, its {k} gaps use {-(-used // 8)}")
    idx = np.cumsum(gaps + 1) - 1
    if k and idx[-1] >= numel:
        raise PayloadError(f"DWC index {int(idx[-1])} is out of range (numel {numel})")
    return idx


# ---------------------------------------------------------------- values
def _f16(x: np.ndarray, up: bool) -> np.ndarray:
    """``x`` (float64, >= 0) as float16, rounded up or down (never across 0)."""
    h = x.astype(np.float16)
    off = h.astype(np.float64) < x if up else h.astype(np.float64) > x
    h[off] = np.nextafter(h[off], np.float16(np.inf if up else 0))
    return h


def _mag_qmax(bits: int, r: int) -> int:
    return (2 ** (bits - 1) - 1) >> r


def _quantize(v: np.ndarray, bits: int, group: int, offset: bool) -> tuple[bytes, bytes, int]:
    """``(value stream, scales, magnitude Rice r)`` of ``v`` (see the module docstring)."""
    half, a = 2 ** (bits - 1), np.abs(v.astype(np.float64))
    if a.size and a.max() > F16_MAX:
        raise FlSimError(f"DWC delta has values up to {a.max():.3g}, too large for float16 scales")
    lo16 = _f16(np.array([a.min() if offset and a.size else 0.0]), up=False)
    hi16 = _f16(np.maximum.reduceat(a, np.arange(0, v.size, group)) if v.size else np.zeros(0), up=True)
    lo = float(lo16[0])
    s = ((hi16.astype(np.float64) - lo) / half)[np.arange(v.size) // group]
    m = np.floor(np.divide(a - lo, s, out=np.zeros_like(s), where=s > 0))
    m = np.clip(m, 0, half - 1).astype(np.int64)
    r = _best_rice(m, range(bits), lambda r: _mag_qmax(bits, r))
    stream = np.concatenate([(v < 0).astype(np.uint8), _rice_bits(m, r, _mag_qmax(bits, r))])
    return np.packbits(stream).tobytes(), np.concatenate([lo16, hi16]).astype("<f2").tobytes(), r


def _dequantize(stream: bytes, scales: bytes, bits: int, group: int, k: int, r: int) -> np.ndarray:
    sc = np.frombuffer(scales, "<f2").astype(np.float64)
    if not np.isfinite(sc).all() or (sc < 0).any() or (sc[1:] < sc[0]).any():
        raise PayloadError("DWC scales contain NaN, inf, negative values or a group maximum below lo")
    bit_str = _bit_string(stream)
    if len(bit_str) < k:
        raise PayloadError("DWC value signs are truncated")
    m, used = _rice_decode(bit_str[k:], k, r, _mag_qmax(bits, r), "value magnitudes")
    if len(stream) != -(-(k + used) // 8) or "1" in bit_str[k + used:]:
        raise PayloadError(f"DWC value section has {len(stream)} bytes, its {k} values use {-(-(k + used) // 8)}")
    sign = 1.0 - 2.0 * (np.frombuffer(bit_str[:k].encode(), np.uint8) - 48)
    lo, s = sc[0], (sc[1:] - sc[0]) / 2 ** (bits - 1)
    return (sign * (lo + (m + 0.5) * s[np.arange(k) // group])).astype(np.float32)


# ---------------------------------------------------------------- payloads
def encode(delta: dict[str, torch.Tensor], cfg: DWCConfig, seed: int | None = None) -> bytes:
    """Compress ``delta`` into a payload (see the module docstring); ``seed`` picks the entries of
    ``selection = "random"``."""
    x = flatten(delta)
    numel = x.size
    if not np.isfinite(x).all():
        raise FlSimError("DWC delta contains NaN or inf")
    code, idx_r, idx_bytes = 0, 0, b""
    seeded = cfg.select and cfg.selection == "random"
    block = cfg.block if cfg.select and not seeded else 1
    if seeded:
        t, seed = _threshold(cfg.max_density), _need_seed(seed)
        code, idx_bytes = SEEDED, np.array([seed % 2**64, t], "<u8").tobytes()
        x = x[seeded_entries(seed, t, numel)]
    elif cfg.select:
        blocks = _select(x, cfg)
        code, idx_r, idx_bytes = _encode_indices(blocks, -(-numel // block))
        x = x[_block_entries(blocks, block, numel)]
    mag_r, scale_bytes = 0, b""
    if cfg.quantize:
        val_bytes, scale_bytes, mag_r = _quantize(x, cfg.bits, cfg.group_size, offset=cfg.select and not seeded)
    else:
        val_bytes = x.astype("<f4").tobytes()
    header = [len(delta), numel, SELECT * cfg.select + QUANTIZE * cfg.quantize, cfg.bits if cfg.quantize else 32,
              cfg.group_size if cfg.quantize else 0, x.size, block, code, idx_r, mag_r, len(idx_bytes),
              len(val_bytes)]
    return bytes([VERSION]) + _varints(header) + idx_bytes + val_bytes + scale_bytes


def parse_header(payload: bytes) -> tuple[dict[str, int], int]:
    """``(header fields by name, offset of the index section)``; ``PayloadError`` if malformed."""
    if not isinstance(payload, (bytes, bytearray)):
        raise PayloadError(f"DWC payload must be bytes, got {type(payload).__name__}")
    if not payload or payload[0] != VERSION:
        raise PayloadError(f"DWC payload version {payload[0] if payload else None}, expected {VERSION}")
    values, pos = _read_varints(payload, 1, len(FIELDS))
    return dict(zip(FIELDS, values)), pos


def decode(payload: bytes, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The delta in ``payload`` as float32 tensors shaped like ``like`` (zeros where not sent)."""
    h, pos = parse_header(payload)
    n_t, numel, flags, bits, group, k, block = (h[f] for f in FIELDS[:7])
    code, idx_r, mag_r, n_idx, n_val = (h[f] for f in FIELDS[7:])
    names = sorted(like)
    sizes = [like[n].numel() for n in names]
    if n_t != len(names) or numel != sum(sizes):
        raise PayloadError(f"DWC payload is for {n_t} tensors / {numel} values, not {len(names)} / {sum(sizes)}")
    if flags not in range(4):
        raise PayloadError(f"DWC unknown flags {flags}")
    select, quantize = bool(flags & SELECT), bool(flags & QUANTIZE)
    if (quantize and (bits not in (2, 3, 4, 8) or group < 1 or mag_r >= bits)) or (
            not quantize and (bits != 32 or group != 0 or mag_r)):
        raise PayloadError(f"DWC bad bits {bits} / group size {group} / magnitude code {mag_r}")
    if not (0 <= k <= numel if select else k == numel) or (not select and (code or n_idx or idx_r)):
        raise PayloadError(f"DWC bad kept count {k} / index section for select={select}")
    if not 1 <= block <= 4096 or (not select and block != 1) or idx_r > MAX_RICE_R:
        raise PayloadError(f"DWC bad block size {block} / index code parameter {idx_r} for select={select}")
    want_sc = 2 + 2 * -(-k // group) if quantize else 0
    if not quantize and n_val != 4 * k or len(payload) != pos + n_idx + n_val + want_sc:
        raise PayloadError(f"DWC payload has {len(payload)} bytes; header {pos}, sections {n_idx}/{n_val}, "
                           f"expected scales {want_sc}")
    idx_bytes = payload[pos:pos + n_idx]
    val_bytes = payload[pos + n_idx:pos + n_idx + n_val]
    sc_bytes = payload[pos + n_idx + n_val:]
    idx = None
    if select and code == SEEDED:
        if n_idx != 16 or block != 1 or idx_r:
            raise PayloadError(f"DWC seeded selection needs a 16-byte index section, block 1 and index parameter 0, "
                               f"got {n_idx} / {block} / {idx_r}")
        seed, t = (int(v) for v in np.frombuffer(idx_bytes, "<u8"))
        idx = seeded_entries(seed, t, numel)
        if idx.size != k:
            raise PayloadError(f"DWC seeded selection keeps {idx.size} entries, header says {k}")
    elif select:
        n_blocks = -(-numel // block)
        full = k // block + (k % block > 0)  # blocks holding k entries (only the last block may be short)
        idx = _block_entries(_decode_indices(idx_bytes, code, idx_r, full, n_blocks), block, numel)
        if idx.size != k:
            raise PayloadError(f"DWC {full} blocks of {block} hold {idx.size} entries, header says {k}")
    vals = (_dequantize(val_bytes, sc_bytes, bits, group, k, mag_r) if quantize
            else np.frombuffer(val_bytes, "<f4"))
    if not np.isfinite(vals).all():
        raise PayloadError("DWC values contain NaN or inf")
    x = np.zeros(numel, np.float32)
    x[idx if select else slice(None)] = vals
    parts = dict(zip(names, np.split(x, np.cumsum(sizes)[:-1])))
    return {n: torch.from_numpy(parts[n]).reshape(t.shape).to(t.device) for n, t in like.items()}


def payload_nbytes(payload: bytes) -> int:
    """Bytes of a payload (before Flower's framing)."""
    return len(payload)


def dense_nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of the same tensors sent dense in float32."""
    return 4 * sum(t.numel() for t in tensors.values())


class ErrorFeedback:
    """Sender-side residual memory: what compression dropped is added to the next round's delta."""

    def __init__(self, cfg: DWCConfig):
        self.cfg = cfg
        self.residual: dict[str, torch.Tensor] = {}

    def step(self, delta: dict[str, torch.Tensor], seed: int | None = None) -> tuple[bytes, dict[str, torch.Tensor]]:
        """Compress ``delta`` (plus the residual); returns ``(payload, sent)``, ``sent`` = what the device gets.
        ``seed`` picks the entries of ``selection = "random"`` (use a new one per payload)."""
        if self.residual and {k: r.shape for k, r in self.residual.items()} != {k: v.shape for k, v in delta.items()}:
            raise FlSimError("DWC error-feedback residual does not match the delta's tensors")
        x = {k: v.detach().float() + self.residual[k].to(v.device) if self.cfg.error_feedback and self.residual
             else v.detach().float() for k, v in delta.items()}
        payload = encode(x, self.cfg, seed)
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
