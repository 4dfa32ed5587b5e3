"""The cloud's fourth step: DWC. A tier's cloud-copy change (plus its error-feedback residual) becomes the
tier's next version, what its devices will hold, stored for them; the payload's size is counted as sent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fl_sim.cache import read_meta
from fl_sim.device import model_cache
from fl_sim.mechanisms import dwc
from fl_sim.protocol.records import config_value_bytes, pack_arrays


def payload_seed(seed: int, tier_index: int, version: int) -> int:
    """The seed of a tier's payload of ``version`` (``selection = "random"`` keeps the entries it picks)."""
    ss = np.random.SeedSequence([seed, 19, tier_index, version])
    return int(ss.generate_state(1, np.uint64)[0])


def compress(dwc_cfg, residual: dict, before: dict, after: dict, held: dict,
             seed: int) -> tuple[bytes, dict, dict, dict]:
    """``(payload, new residual, new held, delta)``: the change ``after - before`` compressed with error
    feedback, and what a device holding ``held`` holds once it applies the payload."""
    ef = dwc.ErrorFeedback(dwc_cfg)
    if residual:
        ef.load_state(residual)
    delta = {k: after[k] - before[k] for k in after}
    payload, sent = ef.step(delta, seed)
    return payload, ef.state(), dwc.apply(held, sent), delta


def figures(payload: bytes, delta: dict[str, torch.Tensor], checkpoint_size: int) -> dict:
    """The payload's bytes as they add to the message of a device one version behind, and its ratios to the
    dense fp32 change and to the tier's whole checkpoint."""
    wire = config_value_bytes("dwc_chain", [payload])
    dense_payload = pack_arrays({k: t.float().numpy() for k, t in delta.items()}).tobytes()
    dense = config_value_bytes("dwc_chain", [dense_payload])
    return {"payload_bytes": wire, "ratio_dense": dense / wire, "ratio_checkpoint": checkpoint_size / wire}


def checkpoint_bytes(model_path: str) -> int:
    """Bytes of a device checkpoint as stored on the device (from the zoo manifest; fp32 size otherwise)."""
    try:
        return int(read_meta(Path(model_path))["device_bytes"])
    except (OSError, KeyError, ValueError):
        return 4 * sum(p.numel() for p in model_cache.base_model(model_path).parameters())
