"""Hostile payloads cannot exhaust the cloud: an upload is checked against what its device was asked for
before anything is allocated, and every decoder raises ``PayloadError`` and nothing else."""

import json
import math

import numpy as np
import pytest
import torch

from fl_sim import PayloadError
from fl_sim.mechanisms import uts
from fl_sim.protocol.records import pack_arrays, unpack_arrays


def _blob(header, body: bytes = b"") -> np.ndarray:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return np.frombuffer(np.uint32(len(head)).tobytes() + head + body, np.uint8)


def test_an_upload_of_200000_empty_samples_is_rejected_before_any_allocation():
    n = 200_000
    arrays = {"q_len": np.zeros(n, np.uint8), "questions": np.zeros(0, np.uint8),
              "token_mask": np.zeros(math.ceil(n * 9 / 8), np.uint8), "tokens": np.zeros(0, np.uint8),
              "scales": np.zeros(0, np.float16)}
    blob = pack_arrays(arrays)
    assert blob.nbytes < 500_000  # 425 KB on the wire; as visual tokens it would be about 0.9 GiB
    with pytest.raises(PayloadError, match="200000 samples, more than the 8"):
        uts.decode_upload(unpack_arrays(blob), 9, 128, 61, None, max_samples=8, token_bits=4, max_tokens=5)
    with pytest.raises(PayloadError, match="empty question"):  # without a limit: no sample has an empty question
        uts.decode_upload(unpack_arrays(blob), 9, 128, 61, None)


def test_an_upload_is_held_to_the_encoding_and_token_share_asked_for():
    vis = torch.randn(2, 9, 16)
    up = uts.encode_upload([[5], [6, 7]], vis=vis, mask=uts.select_tokens(torch.rand(2, 9), 0.5), token_bits=8)
    assert uts.decode_upload(up, 9, 16, 61, None, max_samples=2, token_bits=8, max_tokens=5)["vis"].shape == (2, 9, 16)
    with pytest.raises(PayloadError, match="not the 4-bit encoding"):
        uts.decode_upload(up, 9, 16, 61, None, token_bits=4)
    full = uts.encode_upload([[5], [6, 7]], vis=vis, token_bits=8)  # every token, where half were asked for
    with pytest.raises(PayloadError, match="keeps 9 tokens of a sample, more than the 5"):
        uts.decode_upload(full, 9, 16, 61, None, token_bits=8, max_tokens=5)


@pytest.mark.parametrize("header,match", [
    (b'[["a", "|u1", [1e400]]]', "not \\[name, dtype"),       # a shape of infinity, not OverflowError
    (b"[" * 4000 + b"]" * 4000, "malformed header"),         # deep nesting, not RecursionError
    ([["a", "|u1", [2.5]]], "not \\[name, dtype"),           # a fractional dimension, not truncated
    ([["a", "|u1", [True]]], "not \\[name, dtype"),
    ({"a": 1}, "not a list"),
    ([["a", "|u1", [10**30]]], "truncated"),
    (b"x" * 9000, "header of 9000 bytes"),
])
def test_malformed_packed_headers_are_payload_errors(header, match):
    with pytest.raises(PayloadError, match=match):
        unpack_arrays(_blob(header))


def test_the_cloud_asks_uploads_for_what_its_devices_were_told(tmp_path):
    from conftest import CDCCA, tiny_config

    from fl_sim.fleet.profiles import make_fleet
    from fl_sim.server.strategy import RunContext
    from strategies.cdcca import CDCCA as Strategy
    from strategies.cloud_kd_full import CloudKDFull

    cfg = tiny_config(CDCCA, tmp_path, None)  # budget 0.5 of 8 samples, half the tokens in 4 bits
    fleet = make_fleet(cfg.fleet, ["tiny-high", "tiny-low"], cfg.seed)
    assert Strategy(RunContext(cfg, fleet, {}, tmp_path)).upload_limits(9) == {
        "max_samples": 4, "token_bits": 4, "max_tokens": 5}
    full = CloudKDFull.effective_config(cfg)
    assert CloudKDFull(RunContext(full, fleet, {}, tmp_path)).upload_limits(9) == {
        "max_samples": 8, "token_bits": None, "max_tokens": None}
