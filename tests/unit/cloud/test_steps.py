"""CD-CCA's cloud steps alone (fl_sim.cloud), without models or Flower: the batch draw, DWC's step with
error feedback, the devices' versions and downlinks, and the round's accounting."""

from types import SimpleNamespace

import numpy as np
import torch

from fl_sim.cloud import compression
from fl_sim.cloud.accounting import round_means, virtual_seconds
from fl_sim.cloud.device_versions import DeviceVersions
from fl_sim.cloud.distillation import draw_batches
from fl_sim.config import AKDConfig, DWCConfig
from fl_sim.mechanisms import dwc
from fl_sim.mechanisms.replay import ReplayBuffer
from fl_sim.protocol.version_store import VersionStore


def _targets(n: int) -> dict:
    return {"input_ids": torch.arange(n)[:, None], "distil": torch.ones(n)}


def test_a_batch_is_all_new_until_the_buffer_fills_then_half_and_half_plus_the_anchor():
    rng = np.random.default_rng(0)
    empty = ReplayBuffer(capacity=32, seed=0)
    parts = draw_batches(rng, n_new=20, buffer=empty, batch_size=8, n_anchor=0, k_anchor=0)
    assert [(s, len(r)) for s, r in parts] == [("new", 8)] and len(set(parts[0][1])) == 8
    full = ReplayBuffer(capacity=32, seed=0)
    full.add(_targets(30))
    parts = draw_batches(rng, n_new=20, buffer=full, batch_size=8, n_anchor=10, k_anchor=2)
    assert [(s, len(r)) for s, r in parts] == [("new", 4), ("replay", 4), ("anchor", 2)]
    few = draw_batches(rng, n_new=2, buffer=full, batch_size=8, n_anchor=0, k_anchor=0)
    assert [(s, len(r)) for s, r in few] == [("new", 2), ("replay", 6)]  # the buffer fills what is missing


def test_compression_without_selection_or_quantisation_sends_the_change_exactly():
    cfg = DWCConfig(select=False, quantize=False)
    before = {"w": torch.zeros(4, 3)}
    after = {"w": torch.arange(12, dtype=torch.float32).reshape(4, 3) / 10}
    held = {"w": torch.ones(4, 3)}
    payload, residual, new_held, delta = compression.compress(cfg, {}, before, after, held, seed=1)
    assert torch.equal(delta["w"], after["w"]) and torch.allclose(new_held["w"], held["w"] + after["w"])
    assert torch.allclose(dwc.apply(held, dwc.decode(payload, held))["w"], new_held["w"])
    figures = compression.figures(payload, delta, checkpoint_size=10_000)
    assert figures["payload_bytes"] > 0 and figures["ratio_checkpoint"] == 10_000 / figures["payload_bytes"]


def test_compression_keeps_what_it_did_not_send_for_the_next_round():
    cfg = DWCConfig(max_density=0.25, energy=0.9)
    change = {"w": torch.linspace(-1, 1, 64).reshape(8, 8)}
    zero = {"w": torch.zeros(8, 8)}
    _, residual, held, _ = compression.compress(cfg, {}, zero, change, zero, 3)
    assert 0 < held["w"].count_nonzero() <= 16  # at most a quarter of the entries went down
    assert torch.allclose(held["w"] + residual["w"], change["w"], atol=1e-6)  # sent + kept = the change
    _, residual2, held2, _ = compression.compress(cfg, residual, zero, zero, held, 4)  # no new change
    assert torch.allclose(held2["w"] + residual2["w"], change["w"], atol=1e-6)  # the residual keeps going down


def test_devices_that_reject_their_downlink_get_a_dense_refresh_next(tmp_path):
    store = VersionStore(tmp_path)
    weights = {"w": torch.ones(2, 2)}
    store.put("phone", 1, b"payload-1", weights)
    versions = DeviceVersions(["phone"], store)
    versions.latest["phone"] = 1
    chain = versions.downlink(7, "phone", weights)
    assert chain.task_values == {"dwc_chain": [b"payload-1"]} and not chain.records
    sent = {7: SimpleNamespace(held_version=0, target_version=1), 8: SimpleNamespace(held_version=0, target_version=1)}
    reply = SimpleNamespace(content={})
    rejected = versions.absorb([(7, reply, {"version": 0, "downlink_rejected": 1}),
                                (8, reply, {"version": 1, "downlink_rejected": 0})], sent, server_round=2)
    assert rejected == 1 and versions.needs_full == {7} and versions.of(8) == 1 and versions.of(7) == 0
    assert "dwc_full" in versions.downlink(7, "phone", weights).records
    assert versions.downlink(8, "phone", weights).records == {}  # up to date: nothing to send
    again = DeviceVersions(["phone"], store)
    again.load_state(versions.state())
    assert again.held == versions.held and again.needs_full == {7} and again.rejected == {"uploads": 0, "downlink": 1}


def test_the_round_reports_tier_means_and_counts_every_pass_of_the_cloud():
    means = round_means({"a": {"loss": 1.0, "payload_bytes": 100}, "b": {"loss": 3.0}})
    assert means == {"akd_loss": 2.0, "dwc_payload_bytes": 100.0}
    cfg = AKDConfig(steps=10, batch_size=8, cloud_ms_per_sample=2.0)
    assert virtual_seconds(cfg, labelled=50, tiers_trained=3, captioned=50) == (50 + 3 * 10 * 8 + 50) * 2.0 / 1000
