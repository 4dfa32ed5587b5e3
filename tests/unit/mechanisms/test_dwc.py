"""DWC downlink compression: round trips, error bounds, selection, index coding, error feedback, bad payloads."""

import math
import zlib

import numpy as np
import pytest
import torch

from fl_sim import FlSimError
from fl_sim.mechanisms.dwc import (
    FIELDS,
    VERSION,
    DWCConfig,
    ErrorFeedback,
    PayloadError,
    _rice_bits,
    _rice_decode,
    _varints,
    apply,
    decode,
    dense_nbytes,
    encode,
    parse_header,
    payload_nbytes,
)

SHAPES = {"b.lora_A": (8, 64), "a.lora_B": (64, 8), "c.bias": (37,), "d.proj": (30, 40)}


def make_delta(seed: int = 0, shapes=SHAPES, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(s, generator=g) for k, s in shapes.items()}


def flat(tensors) -> np.ndarray:
    return np.concatenate([tensors[k].reshape(-1).numpy() for k in sorted(tensors)])


def kept(payload, like) -> np.ndarray:
    return np.flatnonzero(flat(decode(payload, like)))


def sections(p: bytes) -> tuple[dict, bytes, bytes, bytes]:
    """``(header, indices, values, scales)`` of a payload."""
    h, pos = parse_header(p)
    n_i, n_v = h["index_bytes"], h["value_bytes"]
    return h, p[pos:pos + n_i], p[pos + n_i:pos + n_i + n_v], p[pos + n_i + n_v:]


def build(h: dict, idx: bytes, val: bytes, sc: bytes) -> bytes:
    """A payload from its parts; the section lengths in ``h`` are set from ``idx`` and ``val``."""
    h = dict(h, index_bytes=len(idx), value_bytes=len(val))
    return bytes([VERSION]) + _varints([h[f] for f in FIELDS]) + idx + val + sc


def scales(p: bytes) -> tuple[float, np.ndarray]:
    """``(lo, per-group hi)`` of a quantised payload."""
    a = np.frombuffer(sections(p)[3], "<f2").astype(np.float64)
    return a[0], a[1:]


def test_dense_round_trip_is_exact():
    d = make_delta()
    p = encode(d, DWCConfig(select=False, quantize=False))
    out = decode(p, d)
    assert isinstance(p, bytes) and list(out) == list(d)
    for k in d:
        assert out[k].dtype == torch.float32 and torch.equal(out[k], d[k])
    assert dense_nbytes(d) < payload_nbytes(p) <= dense_nbytes(d) + 32


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("select", [False, True])
def test_quantised_error_within_group_bound(bits, select):
    d = make_delta(1)
    cfg = DWCConfig(select=select, energy=1.0, max_density=0.3, bits=bits, group_size=16)
    p = encode(d, cfg)
    x, xhat = flat(d).astype(np.float64), flat(decode(p, d)).astype(np.float64)
    idx = np.flatnonzero(xhat) if select else np.arange(x.size)
    if select:  # kept entries decode to sign * (lo + (m + 0.5) * s), never 0
        assert idx.size == math.ceil(0.3 * x.size)
    lo, hi = scales(p)
    assert hi.size == math.ceil(idx.size / 16)
    a = np.abs(x[idx])
    assert lo <= a.min() and bool(lo == 0) == (not select) and (not select or lo > a.min() * (1 - 2 ** -9))
    absmax = np.array([a[i:i + 16].max() for i in range(0, idx.size, 16)])
    assert np.all(hi >= absmax) and np.all(hi <= absmax * (1 + 2 ** -9))  # float16, rounded up
    s = ((hi - lo) / 2 ** (bits - 1))[np.arange(idx.size) // 16]
    assert np.all(np.abs(x[idx] - xhat[idx]) <= s / 2 * (1 + 1e-6) + 1e-7)
    assert np.all(np.sign(xhat[idx]) == np.sign(x[idx]))


def test_magnitude_offset_beats_plain_midrise():
    """Kept entries are the largest: spending levels on [lo, hi] instead of [0, hi] cuts the error."""
    d = make_delta(13, {"w": (200, 100)})
    cfg = DWCConfig(energy=1.0, max_density=0.05, bits=3)
    x, xhat = flat(d).astype(np.float64), flat(decode(encode(d, cfg), d)).astype(np.float64)
    idx = np.flatnonzero(xhat)
    lo, hi = scales(encode(d, cfg))
    plain = (hi / 4)[np.arange(idx.size) // 64] / 2  # the bound of 3-bit midrise over [-hi, hi]
    assert lo > 0 and np.mean(np.abs(x[idx] - xhat[idx])) < 0.6 * np.mean(plain)


def test_tiny_and_zero_groups():
    d = {"a": torch.tensor([1e-9, -3e-9, 0.0, 2e-10]), "b": torch.zeros(4)}
    cfg = DWCConfig(select=False, bits=4, group_size=4)
    p = encode(d, cfg)
    out = decode(p, d)
    lo, hi = scales(p)
    assert lo == 0 and hi[0] > 0 and hi[1] == 0
    assert torch.all((out["a"] - d["a"]).abs() <= hi[0] / 16) and torch.equal(out["b"], torch.zeros(4))


@pytest.mark.parametrize("r,qmax", [(0, None), (3, None), (7, None), (0, 3), (1, 1), (2, 0), (0, 7), (2, 1)])
def test_rice_codes_round_trip(r, qmax):
    rng = np.random.default_rng(r)
    top = (qmax + 1 << r) if qmax is not None else 5000
    v = np.concatenate([[0, top - 1], rng.integers(0, top, 500), rng.geometric(0.05, 500) % top])
    bits = _rice_bits(v, r, qmax)
    assert bits.size == sum(int(x) >> r for x in v) + v.size * (r + 1) - (
        0 if qmax is None else int(np.sum(v >> r == qmax)))  # the terminating 0 is dropped at qmax
    out, used = _rice_decode((bits + 48).tobytes().decode() + "0101", v.size, r, qmax, "test")
    assert used == bits.size
    np.testing.assert_array_equal(out, v)
    with pytest.raises(PayloadError, match="truncated"):
        _rice_decode((bits[:-1] + 48).tobytes().decode(), v.size, r, qmax, "test")


def test_selection_keeps_largest_smallest_prefix():
    d = make_delta(2)
    x = flat(d).astype(np.float64)
    cfg = DWCConfig(energy=0.5, max_density=1.0, quantize=False)
    idx = kept(encode(d, cfg), d)
    rest = np.setdiff1d(np.arange(x.size), idx)
    assert np.abs(x[idx]).min() >= np.abs(x[rest]).max()
    e, total = (x[idx] ** 2).sum(), (x ** 2).sum()
    assert e >= 0.5 * total
    assert e - np.min(x[idx] ** 2) < 0.5 * total  # one fewer entry would not be enough
    np.testing.assert_array_equal(flat(decode(encode(d, cfg), d))[idx], x[idx].astype(np.float32))


def test_selection_cap_and_zero_delta():
    d = make_delta(3)
    n = dense_nbytes(d) // 4
    idx = kept(encode(d, DWCConfig(energy=0.9, max_density=0.01, quantize=False)), d)
    assert idx.size == math.ceil(0.01 * n)
    x = np.abs(flat(d))
    assert x[idx].min() >= np.delete(x, idx).max()
    w = {"w": torch.arange(1.0, 101.0)}  # 0.07 * 100 is 7.000000000000001 in floats: the cap is still 7
    assert kept(encode(w, DWCConfig(energy=1.0, max_density=0.07, quantize=False)), w).size == 7
    z = {k: torch.zeros_like(v) for k, v in d.items()}
    p = encode(z, DWCConfig())
    assert parse_header(p)[0]["k"] == 0
    assert all(torch.equal(v, torch.zeros_like(v)) for v in decode(p, z).values())
    one = dict(z, **{"c.bias": torch.zeros(37).index_fill_(0, torch.tensor([5]), 1e-3)})
    assert kept(encode(one, DWCConfig(max_density=1e-6)), one).size == 1  # at least one entry


@pytest.mark.parametrize("density,code", [(0.9, 1), (0.05, 2), (0.001, 2)])
def test_index_coding_bitmap_vs_rice(density, code):
    d = make_delta(4, {"w": (100, 200)})
    cfg = DWCConfig(energy=1.0, max_density=density, quantize=False)
    p = encode(d, cfg)
    h, idx_bytes, _, _ = sections(p)
    assert h["index_code"] == code  # 1 = zlib'd bitmap, 2 = Rice-coded gaps
    x, xhat = flat(d), flat(decode(p, d))
    idx = np.flatnonzero(xhat)
    assert idx.size == math.ceil(density * x.size)
    np.testing.assert_array_equal(xhat[idx], x[idx])
    assert np.abs(x[idx]).min() >= np.abs(np.delete(x, idx)).max()
    if code == 2:  # random positions: within 6 % (plus a byte) of log2(numel choose k) bits
        bound = (math.lgamma(x.size + 1) - math.lgamma(idx.size + 1) - math.lgamma(x.size - idx.size + 1)) / math.log(2)
        assert len(idx_bytes) <= 1.06 * bound / 8 + 1


@pytest.mark.parametrize("block,bits", [(8, 4), (5, 8), (64, 2), (16, 3)])
def test_block_selection_whole_blocks_within_bound(block, bits):
    d = make_delta(10)  # numel 3,085: the last block is short for 8 and 64
    x = flat(d).astype(np.float64)
    cfg = DWCConfig(energy=0.6, max_density=0.1, block=block, bits=bits, group_size=16)
    p = encode(d, cfg)
    assert parse_header(p)[0]["block"] == block
    xhat = flat(decode(p, d)).astype(np.float64)
    idx = np.flatnonzero(xhat)  # no kept entry decodes to 0
    blocks = np.unique(idx // block)
    want = np.concatenate([np.arange(b * block, min((b + 1) * block, x.size)) for b in blocks])
    np.testing.assert_array_equal(idx, want)  # whole blocks, the short last one included when kept
    assert blocks.size <= math.ceil(0.1 * x.size / block)
    e = np.add.reduceat(x ** 2, np.arange(0, x.size, block))
    assert e[blocks].min() >= np.delete(e, blocks).max()  # the highest-energy blocks
    lo, hi = scales(p)
    s = ((hi - lo) / 2 ** (bits - 1))[np.arange(idx.size) // 16]
    assert np.all(np.abs(x[idx] - xhat[idx]) <= s / 2 * (1 + 1e-6) + 1e-7)


def test_blocks_cut_index_bytes():
    d = make_delta(11, {f"layer{i:02d}": (1666,) for i in range(30)})
    entry, blocked = (parse_header(encode(d, DWCConfig(max_density=0.05, block=b)))[0] for b in (1, 16))
    assert blocked["index_bytes"] * 4 < entry["index_bytes"]
    assert abs(blocked["k"] - entry["k"]) <= 16  # about the same kept entries


def test_block_error_feedback_conserves_sum():
    fb = ErrorFeedback(DWCConfig(max_density=0.05, block=8))
    total = {k: torch.zeros(s) for k, s in SHAPES.items()}
    for t in range(6):
        d = make_delta(200 + t, scale=0.1)
        _, sent = fb.step(d)
        total = apply(total, {k: d[k] - sent[k] for k in d})
    assert all(torch.allclose(total[k], fb.residual[k], atol=1e-5) for k in SHAPES)


@pytest.mark.parametrize("field,value,match", [("block", 0, "block size"), ("block", 5000, "block size"),
                                               ("k", -1, "blocks of 8 hold")])
def test_malformed_block_header(field, value, match):
    d = make_delta(12)
    h, idx, val, sc = sections(encode(d, DWCConfig(energy=1.0, max_density=0.1, block=8, quantize=False)))
    assert h["k"] % 8 == 0  # whole blocks of 8 (the short last block is not among the largest)
    if field == "k":  # claim one entry fewer than the kept blocks hold (value section cut to match)
        h["k"] += value
        val = val[:4 * h["k"]]
    else:
        h[field] = value
    with pytest.raises(PayloadError, match=match):
        decode(build(h, idx, val, sc), d)


@pytest.mark.parametrize("ef", [True, False])
def test_error_feedback_conserves_sum(ef):
    cfg = DWCConfig(error_feedback=ef, max_density=0.02)
    fb = ErrorFeedback(cfg)
    total_delta = {k: torch.zeros(s) for k, s in SHAPES.items()}
    total_sent = {k: torch.zeros(s) for k, s in SHAPES.items()}
    for t in range(10):
        d = make_delta(100 + t, scale=0.1)
        _, sent = fb.step(d)
        total_delta = apply(total_delta, d)
        total_sent = apply(total_sent, sent)
    conserved = all(torch.allclose(total_sent[k] + fb.residual[k], total_delta[k], atol=1e-5) for k in SHAPES)
    assert conserved is ef
    if not ef:
        assert all(torch.equal(r, torch.zeros_like(r)) for r in fb.residual.values())


def test_error_feedback_state_round_trip():
    fb = ErrorFeedback(DWCConfig())
    fb.step(make_delta(5))
    st = fb.state()
    assert all(v.is_contiguous() and v.dtype == torch.float32 for v in st.values())
    fb2 = ErrorFeedback(DWCConfig())
    fb2.load_state(st)
    assert all(torch.equal(fb2.residual[k], fb.residual[k]) for k in SHAPES)
    d = make_delta(6)
    (p1, s1), (p2, s2) = fb.step(d), fb2.step(d)
    assert p1 == p2 and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_compression_ratio_defaults():
    d = make_delta(7, {f"layer{i:02d}": (1666,) for i in range(30)})
    assert dense_nbytes(d) == 4 * 49980
    p = encode(d, DWCConfig())
    assert isinstance(p, bytes) and payload_nbytes(p) * 50 <= dense_nbytes(d)


def _corrupt(kind: str, d) -> tuple[object, dict]:
    cfg = DWCConfig(quantize=kind != "nan_value", **({"energy": 1.0, "max_density": 0.9} if kind == "bad_zlib" else {}))
    p = encode(d, cfg)
    h, idx, val, sc = sections(p)
    like = d
    if kind == "truncated":
        return p[:-3], like
    if kind == "trailing":
        return p + b"\0", like
    if kind == "header":
        return p[:4], like
    if kind == "version":
        return bytes([VERSION - 1]) + p[1:], like
    if kind == "not_bytes":
        return {"header": np.zeros(12, np.int64), "blob": np.zeros(3, np.uint8)}, like
    if kind == "numel":
        like = dict(d, **{"c.bias": torch.zeros(36)})
    elif kind == "tensors":
        like = {k: v for k, v in d.items() if k != "c.bias"}
    elif kind == "nan_value":
        val = np.float32(np.nan).tobytes() + val[4:]
    elif kind in ("nan_scale", "negative_scale"):
        bad = np.float16(np.nan if kind == "nan_scale" else -1.0).tobytes()
        sc = sc[:2] + bad + sc[4:] if kind == "nan_scale" else bad + sc[2:]
    elif kind == "lo_above_hi":
        sc = np.float16(1e4).tobytes() + sc[2:]
    elif kind == "bits":
        h["bits"] = 5
    elif kind == "mag_code":
        h["mag_r"] = h["bits"]
    elif kind == "value_padding":
        val = val[:-1] + bytes([val[-1] | 1]) if (8 - (h["k"] + 1) % 8) % 8 else val + b"\1"
    elif kind == "bad_zlib":
        assert h["index_code"] == 1
        idx = b"\0\0" + idx[2:]
    elif kind == "index_code":
        h["index_code"] = 9
    return build(h, idx, val, sc), like


@pytest.mark.parametrize("kind,match", [
    ("truncated", "payload has"), ("trailing", "payload has"), ("header", "header is truncated"),
    ("version", "version"), ("not_bytes", "must be bytes"), ("numel", "values, not"), ("tensors", "tensors"),
    ("nan_value", "values contain"), ("nan_scale", "scales"), ("negative_scale", "scales"),
    ("lo_above_hi", "below lo"), ("bits", "bits 5"), ("mag_code", "magnitude code"),
    ("value_padding", "value section"), ("bad_zlib", "zlib"), ("index_code", "index code")])
def test_malformed_payloads(kind, match):
    d = make_delta(8)
    p, like = _corrupt(kind, d)
    with pytest.raises(PayloadError, match=match):
        decode(p, like)


def _gap_bits(gaps, r=0) -> bytes:
    return np.packbits(_rice_bits(np.array(gaps), r)).tobytes()


@pytest.mark.parametrize("code,raw,match", [
    (2, _gap_bits([7, 0, 3]), "out of range"), (2, _gap_bits([7]), "truncated"),
    (2, _gap_bits([1, 0, 0]) + b"\0", "index section has"),  # 3 kept entries, one byte too many
    (1, zlib.compress(bytes([0b00000011, 0b11000000]), 9), "bitmap"),  # 4 kept
    (1, zlib.compress(bytes([0b00000001, 0b11100000]), 9), "bitmap"),  # a padding bit set
    (1, zlib.compress(bytes([0b00000001, 0b11000000, 0]), 9), "inflate")])
def test_malformed_indices(code, raw, match):
    d = {"w": torch.arange(1.0, 11.0)}
    h, _, val, sc = sections(encode(d, DWCConfig(energy=1.0, max_density=0.3, quantize=False)))
    assert h["k"] == 3
    h["index_code"], h["index_r"] = code, 0
    with pytest.raises(PayloadError, match=match):
        decode(build(h, raw, val, sc), d)


def test_an_oversized_index_gap_is_malformed_not_an_overflow():
    """A long unary run with a large Rice parameter decodes to a gap beyond int64: rejected as malformed."""
    d = {"w": torch.arange(1.0, 11.0)}
    h, _, val, sc = sections(encode(d, DWCConfig(energy=1.0, max_density=0.3, quantize=False)))
    h["index_code"], h["index_r"] = 2, 40
    huge = np.packbits(np.concatenate([np.ones(2 ** 23, np.uint8), np.zeros(41 + 2 * 41, np.uint8)])).tobytes()
    with pytest.raises(PayloadError, match="above 10"):
        decode(build(h, huge, val, sc), d)


@pytest.mark.parametrize("value,match", [(float("nan"), "NaN"), (1e5, "float16")])
def test_unencodable_deltas_are_refused(value, match):
    d = make_delta(14)
    d["c.bias"][3] = value
    with pytest.raises(FlSimError, match=match):
        encode(d, DWCConfig())


def test_config_and_apply():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        DWCConfig(bits=5)
    with pytest.raises(ValidationError):
        DWCConfig(energy=0)
    w = make_delta(9)
    new = apply(w, {"c.bias": torch.ones(37)})
    assert torch.equal(new["c.bias"], w["c.bias"] + 1) and torch.equal(new["d.proj"], w["d.proj"])
    assert new["d.proj"] is not w["d.proj"]


def test_device_applies_a_payload_chain_and_rejects_malformed_ones():
    from clients.cdcca_device import CDCCADeviceSettings, apply_downlink
    from fl_sim.mechanisms.uts import UTSConfig

    g = torch.Generator().manual_seed(3)
    initial = {"a": torch.randn(40, 8, generator=g), "b": torch.randn(16, generator=g)}
    ef = ErrorFeedback(DWCConfig(max_density=0.2))
    payloads, want = [], dict(initial)
    for _ in range(2):
        payload, sent = ef.step({k: 0.1 * torch.randn(t.shape, generator=g) for k, t in initial.items()})
        payloads.append(payload)
        want = apply(want, sent)
    cfg = CDCCADeviceSettings(held_version=0, target_version=2, uts=UTSConfig())
    as_arrays = [payloads[0], np.frombuffer(payloads[1], np.uint8)]  # bytes, or uint8 arrays as received
    got, version, reason = apply_downlink(None, cfg, initial, {"chain": {"payloads": as_arrays}})
    assert (version, reason) == (2, "")
    assert all(torch.equal(got[k], want[k]) for k in initial)

    # a dense refresh is applied as sent; one with a NaN or a wrong shape is rejected
    full = {k: (t + 1).numpy() for k, t in initial.items()}
    got, version, reason = apply_downlink(None, cfg, initial, {"full": full})
    assert (version, reason) == (2, "") and all(torch.equal(got[k], initial[k] + 1) for k in initial)
    for what, broken in (("nan", {**full, "a": np.full((40, 8), np.nan, np.float32)}),
                         ("shape", {**full, "b": np.zeros(15, np.float32)}), ("missing", {"a": full["a"]})):
        got, version, reason = apply_downlink(None, cfg, initial, {"full": broken})
        assert version == 0 and reason, what
    # a downlink damaged in transit (fault injection) is rejected, whichever payload lost its byte
    from clients.faults import corrupt_downlink

    for seed in range(4):
        damaged = corrupt_downlink({"chain": {"payloads": as_arrays}}, np.random.default_rng(seed))
        assert apply_downlink(None, cfg, initial, damaged)[1] == 0
    assert apply_downlink(None, cfg, initial, corrupt_downlink({"full": full}, np.random.default_rng(0)))[1] == 0
    # anything unexpected while decoding is a rejection too, never an exception out of the device round
    class Weird(bytes):
        def __len__(self):
            raise RuntimeError("boom")
    weird = {"chain": {"payloads": [payloads[0], Weird(payloads[1])]}}
    got, version, reason = apply_downlink(None, cfg, initial, weird)
    assert version == 0 and "RuntimeError" in reason

    bad = {"not a list": {"payloads": payloads[0]},
           "other key": {"packed": payloads},
           "truncated": {"payloads": [payloads[0], payloads[1][:-5]]},
           "not bytes": {"payloads": [payloads[0], 7]},
           "one payload for two versions": {"payloads": payloads[:1]}}
    for what, chain in bad.items():
        got, version, reason = apply_downlink(None, cfg, initial, {"chain": chain})
        assert version == 0 and reason, what
        assert all(torch.equal(got[k], initial[k]) for k in initial), what


def test_seeded_selection_sends_no_indices_and_the_device_regenerates_them():
    from fl_sim.mechanisms.dwc import seeded_entries, train_mask

    d = make_delta(11)
    n = sum(v.numel() for v in d.values())
    cfg = DWCConfig(selection="random", max_density=0.2, bits=3, group_size=16)
    p = encode(d, cfg, seed=5)
    h, idx, _, _ = sections(p)
    assert h["index_code"] == 3 and len(idx) == 16  # seed + threshold, whatever k
    got = kept(p, d)
    assert 0.15 * n < got.size < 0.25 * n  # a Bernoulli(0.2) draw over ~2k entries
    assert np.array_equal(got, seeded_entries(5, int(0.2 * 2**64), n))
    # the hash of a position is 0 only for seed = -(i + 1) mod 2**64, so a threshold of 1 keeps nothing
    # (a hash of seed * golden + i kept entry 0 of seed 0 at any density), and a seed is required
    assert all(seeded_entries(s, 1, n).size == 0 for s in range(8))
    with pytest.raises(FlSimError, match="needs a seed"):
        encode(d, cfg)
    other = kept(encode(d, cfg, seed=6), d)
    assert not np.array_equal(got, other)  # a new seed, new entries
    masks = train_mask(d, cfg, seed=5)
    assert np.array_equal(np.flatnonzero(flat({k: m.float() for k, m in masks.items()})), got)
    # values are quantised within the bound, with lo = 0 (kept entries are not the largest)
    x, y = flat(d)[got], flat(decode(p, d))[got]
    lo, hi = scales(p)
    assert lo == 0
    step = np.repeat(hi / 4, 16)[:got.size]
    assert (np.abs(x - y) <= step / 2 + 1e-3).all()
    # cheaper per kept value than top-k selection at the same density, which must send positions
    top = encode(d, DWCConfig(max_density=0.2, energy=1.0, bits=3, group_size=16))
    assert len(p) / got.size < 0.75 * len(top) / parse_header(top)[0]["k"]
    # error feedback over seeded payloads still conserves the sum
    fb, total, sent_sum = ErrorFeedback(cfg), torch.zeros(n), torch.zeros(n)
    for r in range(6):
        step_d = make_delta(20 + r)
        _, sent = fb.step(step_d, seed=r)
        total += torch.from_numpy(flat(step_d))
        sent_sum += torch.from_numpy(flat(sent))
    assert torch.allclose(sent_sum + torch.from_numpy(flat(fb.residual)), total, atol=1e-4)


@pytest.mark.parametrize("change,match", [("index", "16-byte index"), ("k", "seeded selection keeps"),
                                          ("index_r", "16-byte index")])
def test_malformed_seeded_payloads(change, match):
    d = make_delta(12)
    h, idx, val, sc = sections(encode(d, DWCConfig(selection="random", max_density=0.3), seed=1))
    if change == "index":
        idx = idx[:8]
    elif change == "index_r":
        h["index_r"] = 1
    else:
        h["k"] += 1
    with pytest.raises(PayloadError, match=match):
        decode(build(h, idx, val, sc), d)
