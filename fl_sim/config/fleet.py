"""``[fleet]``: the devices, their data, availability, links and domain schedules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, model_validator

from fl_sim.config.section import Section, declared
from fl_sim.world.domains import DOMAINS, SHIFTED, domain_error


class Range(Section):
    """A value drawn per device: log-uniform in [low, high] (``low == high`` for a constant)."""
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) < low ({self.low})")
        return self


class ScheduleConfig(Section):
    """``[fleet.schedule]``: each device's own sequence of domains (``fl_sim.fleet.schedule``), drawn from the run
    seed; replaces the single shift (``shift_round``, ``shift_domains``)."""
    first: str = Field("source", description="the domain every device starts in")
    domains: dict[str, float] = Field(default_factory=lambda: {d: 1.0 for d in DOMAINS}, description=(
        "domain -> weight of being the next stage's domain (never the current one)"))
    stages: tuple[int, int] = Field((3, 4), description="[min, max] stages a device goes through, the first included")
    stage_rounds: tuple[int, int] = Field((2, 4), description="[min, max] rounds a stage lasts")
    ramp_rounds: tuple[int, int] = Field((0, 0), description=(
        "[min, max] rounds of gradual transition into a stage (0 = abrupt); below stage_rounds' min"))
    return_to_first: bool = Field(True, description="the last stage returns to `first` (a domain seen before)")

    @model_validator(mode="after")
    def _sane(self, info: ValidationInfo):
        for key in ("stages", "stage_rounds", "ramp_rounds"):
            lo, hi = getattr(self, key)
            if lo > hi or lo < (0 if key == "ramp_rounds" else 1):
                raise ValueError(f"{key} must be [min, max] with {0 if key == 'ramp_rounds' else 1} <= min <= max, "
                                 f"got {[lo, hi]}")
        if self.ramp_rounds[1] >= self.stage_rounds[0]:
            raise ValueError(f"ramp_rounds max ({self.ramp_rounds[1]}) must be below stage_rounds min "
                             f"({self.stage_rounds[0]}): a transition ends within its stage")
        for d in [self.first, *self.domains]:
            if (why := domain_error(d, declared(info))) is not None:
                raise ValueError(why)
        if any(w < 0 for w in self.domains.values()) or sum(self.domains.values()) <= 0:
            raise ValueError(f"domains weights must be >= 0 with a positive sum, got {self.domains}")
        return self


class FleetConfig(Section):
    num_devices: int = Field(20, ge=1)
    tiers: dict[str, float] = Field(default_factory=dict, description="tier name -> share; empty = all equal")
    compute_ms_per_sample: Range = Range(low=20, high=120)
    uplink_kbps: Range = Range(low=1_000, high=20_000)
    downlink_kbps: Range = Range(low=5_000, high=100_000)
    active_period_s: Range = Range(low=600, high=3600)
    active_fraction: Range = Range(low=0.5, high=1.0)
    shift_round: tuple[int, int] = (2, 3)
    shift_domains: dict[str, float] = Field(default_factory=lambda: {d: 1.0 for d in SHIFTED})
    samples_per_round: int = Field(32, ge=1)
    partition: Literal["iid", "dirichlet"] = "dirichlet"
    partition_by: Literal["family", "answer"] = "family"
    dirichlet_alpha: float = Field(0.5, gt=0)
    trace: str | None = Field(None, description="CSV or JSON file of device profiles (overrides the draws)")
    train_size: int = Field(2000, ge=1, description="train-split samples per domain, shared out among devices")
    crash_prob: float = Field(0.0, ge=0, le=1, description="chance a device raises during a round (fault injection)")
    corrupt_prob: float = Field(0.0, ge=0, le=1, description="chance a CD-CCA upload is malformed (fault injection)")
    corrupt_downlink_prob: float = Field(0.0, ge=0, le=1, description=(
        "chance a CD-CCA downlink reaches its device damaged (fault injection)"))
    schedule: ScheduleConfig | None = Field(None, description=(
        "multi-stage domain schedules drawn per device (replaces shift_round and shift_domains)"))
    replay: str | None = Field(None, description=(
        "run directory (or its results.jsonl) of an earlier run of this fleet: each round samples and keeps "
        "the devices that run sampled and kept, whatever their simulated times (a paired comparison)"))

    @model_validator(mode="after")
    def _domains(self, info: ValidationInfo):
        for key, shares in (("tiers", self.tiers), ("shift_domains", self.shift_domains)):
            if any(v < 0 for v in shares.values()) or (shares and sum(shares.values()) <= 0):
                raise ValueError(f"{key} shares must be >= 0 with a positive sum, got {shares}")
        for d in self.shift_domains:
            if (why := domain_error(d, declared(info))) is not None:
                raise ValueError(f"shift_domains: {why}")
        if self.shift_round[0] > self.shift_round[1] or self.shift_round[0] < 1:
            raise ValueError(f"shift_round must be [first, last] with 1 <= first <= last, got {self.shift_round}")
        return self
