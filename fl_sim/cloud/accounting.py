"""What a cloud round reports and costs: wall seconds per step, the tiers' figures as round means, and the
virtual seconds the cloud adds to the simulated clock (``strategy.akd.cloud_ms_per_sample`` per pass)."""

from __future__ import annotations

import time

import numpy as np

AKD_KEYS = ("loss", "ce", "kl", "feat")
DWC_KEYS = ("payload_bytes", "ratio_dense", "ratio_checkpoint")


class Laps:
    """Wall seconds of each step of a round (``cloud_phases_s``): ``lap(name)`` ends the step named."""

    def __init__(self):
        self.start = self._last = time.time()
        self.phases: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = time.time()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._last
        self._last = now

    def total(self) -> float:
        return time.time() - self.start


def round_means(per_tier: dict[str, dict]) -> dict[str, float]:
    """The tiers' AKD losses (``akd_*``) and DWC payload figures (``dwc_*``), each a mean over the tiers that
    have it."""
    out = {}
    for key in AKD_KEYS + DWC_KEYS:
        vals = [f[key] for f in per_tier.values() if key in f]
        if vals:
            out[f"akd_{key}" if key in AKD_KEYS else f"dwc_{key}"] = float(np.mean(vals))
    return out


def virtual_seconds(akd_cfg, labelled: int, tiers_trained: int, captioned: int) -> float:
    """The cloud's virtual time: one pass per labelled row, per sample of every AKD step of each trained tier,
    and per caption the teacher writes."""
    passes = labelled + tiers_trained * akd_cfg.steps * akd_cfg.batch_size + captioned
    return passes * akd_cfg.cloud_ms_per_sample / 1000
