"""DWC downlink compression: round trips, error bounds, selection, index coding, error feedback, bad payloads."""

import math
import zlib

import numpy as np
import pytest
import torch

from fl_sim import FlSimError
from fl_sim.dwc import (DWCConfig, ErrorFeedback, PayloadError, apply, decode, dense_nbytes, encode,
                        payload_nbytes)

SHAPES = {"b.lora_A": (8, 64), "a.lora_B": (64, 8), "c.bias": (37,), "d.proj": (30, 40)}


def make_delta(seed: int = 0, shapes=SHAPES, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(s, generator=g) for k, s in shapes.items()}


def flat(tensors) -> np.ndarray:
    return np.concatenate([tensors[k].reshape(-1).numpy() for k in sorted(tensors)])


def kept(payload, like) -> np.ndarray:
    return np.flatnonzero(flat(decode(payload, like)))


def test_dense_round_trip_is_exact():
    d = make_delta()
    p = encode(d, DWCConfig(select=False, quantize=False))
    out = decode(p, d)
    assert list(out) == list(d)
    for k in d:
        assert out[k].dtype == torch.float32 and torch.equal(out[k], d[k])
    assert dense_nbytes(d) < payload_nbytes(p) <= dense_nbytes(d) + 128


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("select", [False, True])
def test_quantised_error_within_group_bound(bits, select):
    d = make_delta(1)
    cfg = DWCConfig(select=select, energy=1.0, max_density=0.3, bits=bits, group_size=16)
    p = encode(d, cfg)
    x, xhat = flat(d), flat(decode(p, d))
    h = p["header"]
    idx = np.flatnonzero(xhat) if select else np.arange(x.size)
    if select:  # zero-valued reconstructions of kept entries are impossible with midrise levels
        assert idx.size == math.ceil(0.3 * x.size)
    n_idx, n_val = int(h[8]), int(h[9])
    scales = np.frombuffer(p["blob"][n_idx + n_val:].tobytes(), "<f2").astype(np.float64)
    assert scales.size == math.ceil(idx.size / 16)
    s = scales[np.arange(idx.size) // 16]
    err = np.abs(x[idx].astype(np.float64) - xhat[idx])
    assert np.all(err <= s / 2 * (1 + 1e-6))
    absmax = np.array([np.abs(x[idx][i:i + 16]).max() for i in range(0, idx.size, 16)])
    np.testing.assert_allclose(scales, absmax / 2 ** (bits - 1), rtol=2 ** -10)  # stored scale ~ absmax/2**(bits-1)
    assert np.all(scales >= absmax / 2 ** (bits - 1))  # rounded up: the bound holds with the stored scale


def test_tiny_and_zero_groups():
    d = {"a": torch.tensor([1e-9, -3e-9, 0.0, 2e-10]), "b": torch.zeros(4)}
    cfg = DWCConfig(select=False, bits=4, group_size=4)
    p = encode(d, cfg)
    out = decode(p, d)
    scales = np.frombuffer(p["blob"][int(p["header"][9]):].tobytes(), "<f2").astype(np.float64)
    assert scales[0] > 0 and scales[1] == 0
    assert torch.all((out["a"] - d["a"]).abs() <= scales[0] / 2) and torch.equal(out["b"], torch.zeros(4))


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
    z = {k: torch.zeros_like(v) for k, v in d.items()}
    p = encode(z, DWCConfig())
    assert p["header"][6] == 0
    assert all(torch.equal(v, torch.zeros_like(v)) for v in decode(p, z).values())
    one = dict(z, **{"c.bias": torch.zeros(37).index_fill_(0, torch.tensor([5]), 1e-3)})
    assert kept(encode(one, DWCConfig(max_density=1e-6)), one).size == 1  # at least one entry


@pytest.mark.parametrize("density,code", [(0.5, 1), (0.001, 3)])
def test_index_coding_bitmap_vs_gaps(density, code):
    d = make_delta(4, {"w": (100, 200)})
    cfg = DWCConfig(energy=1.0, max_density=density, quantize=False)
    p = encode(d, cfg)
    assert p["header"][7] == code  # 1 = bitmap, 3 = uint16 gaps (mean gap ~1000)
    x, xhat = flat(d), flat(decode(p, d))
    idx = np.flatnonzero(xhat)
    assert idx.size == math.ceil(density * x.size)
    np.testing.assert_array_equal(xhat[idx], x[idx])
    assert np.abs(x[idx]).min() >= np.abs(np.delete(x, idx)).max()


@pytest.mark.parametrize("block,bits", [(8, 4), (5, 8), (64, 2)])
def test_block_selection_whole_blocks_within_bound(block, bits):
    d = make_delta(10)  # numel 3,085: the last block is short for 8 and 64
    x = flat(d).astype(np.float64)
    cfg = DWCConfig(energy=0.6, max_density=0.1, block=block, bits=bits, group_size=16)
    p = encode(d, cfg)
    assert int(p["header"][11]) == block
    xhat = flat(decode(p, d)).astype(np.float64)
    idx = np.flatnonzero(xhat)  # midrise levels: no kept entry decodes to 0
    blocks = np.unique(idx // block)
    want = np.concatenate([np.arange(b * block, min((b + 1) * block, x.size)) for b in blocks])
    np.testing.assert_array_equal(idx, want)  # whole blocks, the short last one included when kept
    assert blocks.size <= math.ceil(0.1 * x.size / block)
    e = np.add.reduceat(x ** 2, np.arange(0, x.size, block))
    assert e[blocks].min() >= np.delete(e, blocks).max()  # the highest-energy blocks
    scales = np.frombuffer(p["blob"][int(p["header"][8]) + int(p["header"][9]):].tobytes(), "<f2")
    assert np.all(np.abs(x[idx] - xhat[idx]) <= scales.astype(np.float64)[np.arange(idx.size) // 16] / 2 * (1 + 1e-6))


def test_blocks_cut_index_bytes():
    d = make_delta(11, {f"layer{i:02d}": (1666,) for i in range(30)})
    entry, blocked = (encode(d, DWCConfig(max_density=0.05, block=b)) for b in (1, 16))
    assert int(blocked["header"][8]) * 4 < int(entry["header"][8])  # index section
    assert abs(int(blocked["header"][6]) - int(entry["header"][6])) <= 16  # about the same kept entries


def test_block_error_feedback_conserves_sum():
    fb = ErrorFeedback(DWCConfig(max_density=0.05, block=8))
    total = {k: torch.zeros(s) for k, s in SHAPES.items()}
    for t in range(6):
        d = make_delta(200 + t, scale=0.1)
        _, sent = fb.step(d)
        total = apply(total, {k: d[k] - sent[k] for k in d})
    assert all(torch.allclose(total[k], fb.residual[k], atol=1e-5) for k in SHAPES)


@pytest.mark.parametrize("field,value,match", [(11, 0, "block size"), (11, 5000, "block size"),
                                               (6, -1, "blocks of 8 hold")])
def test_malformed_block_header(field, value, match):
    d = make_delta(12)
    p = encode(d, DWCConfig(energy=1.0, max_density=0.1, block=8, quantize=False))
    h, blob = p["header"].copy(), p["blob"]
    assert int(h[6]) % 8 == 0  # whole blocks of 8 (the short last block is not among the largest)
    if field == 6:  # claim one entry fewer than the kept blocks hold (value section cut to match)
        h[6] += value
        h[9] = 4 * int(h[6])
        blob = blob[:int(h[8]) + int(h[9])]
    else:
        h[field] = value
    with pytest.raises(PayloadError, match=match):
        decode({"header": h, "blob": blob}, d)


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
    assert all(np.array_equal(p1[k], p2[k]) for k in p1) and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_compression_ratio_defaults():
    d = make_delta(7, {f"layer{i:02d}": (1666,) for i in range(30)})
    assert dense_nbytes(d) == 4 * 49980
    p = encode(d, DWCConfig())
    assert len(p) == 2 and payload_nbytes(p) * 20 <= dense_nbytes(d)


def _corrupt(kind: str, d) -> tuple[dict, dict]:
    cfg = DWCConfig(quantize=kind != "nan_value")
    p = {k: v.copy() for k, v in encode(d, cfg).items()}
    like = d
    h, n_idx, n_val = p["header"], int(p["header"][8]), int(p["header"][9])
    if kind == "truncated":
        p["blob"] = p["blob"][:-3]
    elif kind == "numel":
        like = dict(d, **{"c.bias": torch.zeros(36)})
    elif kind == "tensors":
        like = {k: v for k, v in d.items() if k != "c.bias"}
    elif kind == "nan_value":
        p["blob"][n_idx:n_idx + 4] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
    elif kind in ("nan_scale", "negative_scale"):
        bad = np.float16(np.nan if kind == "nan_scale" else -1.0)
        p["blob"][n_idx + n_val:n_idx + n_val + 2] = np.frombuffer(bad.tobytes(), np.uint8)
    elif kind == "bits":
        h[4] = 3
    elif kind == "extra_key":
        p["extra"] = np.zeros(1, np.uint8)
    elif kind == "header_dtype":
        p["header"] = h.astype(np.int32)
    elif kind == "bad_zlib":
        p["blob"][:2] = 0
    elif kind == "index_code":
        h[7] = 9
    return p, like


@pytest.mark.parametrize("kind,match", [
    ("truncated", "blob has"), ("numel", "values, not"), ("tensors", "tensors"), ("nan_value", "values contain"),
    ("nan_scale", "scales"), ("negative_scale", "scales"), ("bits", "bits 3"), ("extra_key", "keys"),
    ("header_dtype", "header"), ("bad_zlib", "zlib"), ("index_code", "index code")])
def test_malformed_payloads(kind, match):
    d = make_delta(8)
    p, like = _corrupt(kind, d)
    with pytest.raises(PayloadError, match=match):
        decode(p, like)


@pytest.mark.parametrize("code,raw,match", [
    (2, [7, 1, 3], "out of range"), (2, [7, 0, 1], "strictly increasing"), (2, [10, 0, 0], "out of range"),
    (2, [7, 1, 1, 1], "inflate"), (2, [7, 1], "inflate"),  # 3 kept entries: gap lists of the wrong length
    (1, [0b00000011, 0b11000000], "bitmap"), (1, [0b00000001, 0b11100000], "bitmap"),  # 4 kept / padding bit set
    (1, [0b00000001, 0b11000000, 0], "inflate")])
def test_malformed_indices(code, raw, match):
    d = {"w": torch.arange(1.0, 11.0)}
    p = encode(d, DWCConfig(energy=1.0, max_density=0.3, quantize=False))
    assert int(p["header"][6]) == 3
    vals = p["blob"][int(p["header"][8]):].tobytes()
    idx = zlib.compress(bytes(raw), 9)
    h = p["header"].copy()
    h[7], h[8] = code, len(idx)
    with pytest.raises(PayloadError, match=match):
        decode({"header": h, "blob": np.frombuffer(idx + vals, np.uint8).copy()}, d)


def test_config_and_apply():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        DWCConfig(bits=3)
    with pytest.raises(ValidationError):
        DWCConfig(energy=0)
    w = make_delta(9)
    new = apply(w, {"c.bias": torch.ones(37)})
    assert torch.equal(new["c.bias"], w["c.bias"] + 1) and torch.equal(new["d.proj"], w["d.proj"])
    assert new["d.proj"] is not w["d.proj"]


def test_device_applies_a_packed_payload_chain_and_rejects_malformed_ones():
    from clients.local import apply_downlink
    from fl_sim.wire import pack_arrays

    g = torch.Generator().manual_seed(3)
    initial = {"a": torch.randn(40, 8, generator=g), "b": torch.randn(16, generator=g)}
    ef = ErrorFeedback(DWCConfig(max_density=0.2))
    payloads, want = [], dict(initial)
    for _ in range(2):
        payload, sent = ef.step({k: 0.1 * torch.randn(t.shape, generator=g) for k, t in initial.items()})
        payloads.append(payload)
        want = apply(want, sent)
    packed = pack_arrays({f"{i}/{n}": a for i, p in enumerate(payloads) for n, a in p.items()})
    cfg = {"held_version": 0, "target_version": 2}
    got, version, reason = apply_downlink(cfg, initial, {"chain": {"packed": packed}})
    assert (version, reason) == (2, "")
    assert all(torch.equal(got[k], want[k]) for k in initial)

    one = pack_arrays({f"0/{n}": a for n, a in payloads[0].items()})
    bad = {"unpacked": {f"0/{n}": a for n, a in payloads[0].items()},
           "truncated": {"packed": packed[:-5]},
           "one payload for two versions": {"packed": one}}
    for what, chain in bad.items():
        got, version, reason = apply_downlink(cfg, initial, {"chain": chain})
        assert version == 0 and reason, what
        assert all(torch.equal(got[k], initial[k]) for k in initial), what
