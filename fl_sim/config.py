"""Experiment configuration: a TOML file validated into ``ExperimentConfig``.

Unknown keys and bad values are errors naming the key (``fleet.num_devices: ...``); the CLI prints
them as one line.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import FlSimError
from .akd import AKDConfig
from .dwc import DWCConfig
from .uts import UTSConfig
from .world.domains import DOMAINS, SHIFTED


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(Section):
    """A value drawn per device: log-uniform in [low, high] (``low == high`` for a constant)."""
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) < low ({self.low})")
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
    replay: str | None = Field(None, description=(
        "run directory (or its results.jsonl) of an earlier run of this fleet: each round samples and keeps "
        "the devices that run sampled and kept, whatever their simulated times (a paired comparison)"))

    @model_validator(mode="after")
    def _domains(self):
        for key, shares in (("tiers", self.tiers), ("shift_domains", self.shift_domains)):
            if any(v < 0 for v in shares.values()) or (shares and sum(shares.values()) <= 0):
                raise ValueError(f"{key} shares must be >= 0 with a positive sum, got {shares}")
        for d in self.shift_domains:
            if d not in DOMAINS:
                raise ValueError(f"unknown domain {d!r} in shift_domains; allowed: {', '.join(DOMAINS)}")
        if self.shift_round[0] > self.shift_round[1] or self.shift_round[0] < 1:
            raise ValueError(f"shift_round must be [first, last] with 1 <= first <= last, got {self.shift_round}")
        return self


class StrategyConfig(Section):
    name: str = "fedavg"
    clients_per_round: int = Field(10, ge=1)
    over_commit: float = Field(1.3, ge=1.0)
    deadline_s: float = Field(600.0, gt=0)
    local_steps: int = Field(4, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    labels: Literal["pseudo", "oracle"] = "pseudo"
    proximal_mu: float = Field(0.01, ge=0)
    lora_r: int = Field(8, ge=1)
    lora_tokens: bool = Field(True, description="adapters also train the word embeddings (devices pretrained on "
                                                "source never learned the shifted domains' words)")
    lora_projector: bool = Field(False, description="LoRA on the projector instead of training it in full "
                                                    "(at r=8 a sixth of the projector's values)")
    uts: UTSConfig = UTSConfig()
    akd: AKDConfig = AKDConfig()
    dwc: DWCConfig = DWCConfig()

    def adapters(self) -> tuple[int, bool, str]:
        """``runtime.adapted_model``'s adapter arguments: LoRA rank, trainable words, projector mode."""
        return self.lora_r, self.lora_tokens, "lora" if self.lora_projector else "full"


class EvalConfig(Section):
    n_test: int = Field(100, ge=1, description="test samples per domain for server-side evaluation")
    every: int = Field(1, ge=1, description="evaluate every N rounds (and always the last)")


class SimulationConfig(Section):
    num_cpus_per_client: float = Field(1.0, gt=0)
    num_cpus: int | None = Field(None, ge=1, description="CPUs Ray may use (default: all)")
    ray_address: str | None = None
    round_timeout_s: float = Field(600.0, gt=0)
    threads_per_client: int = Field(1, ge=1)
    warm_up: bool = Field(True, description=(
        "Ray workers import the device code and load every tier model and domain split while nodes are "
        "mapped, before round 1 (the cost is logged as the warm-up phase, not charged to round 1)"))


class ExperimentConfig(Section):
    name: str = "experiment"
    seed: int = Field(0, ge=0, description="run seed: every random stream (devices, cloud, payloads) derives from it")
    rounds: int = Field(3, ge=1)
    zoo: str = "default"
    zoo_seed: int = Field(0, ge=0, description="seed the model zoo was pretrained with (independent of the run seed)")
    cache_dir: str | None = None
    output_dir: str = "runs"
    fleet: FleetConfig = FleetConfig()
    strategy: StrategyConfig = StrategyConfig()
    eval: EvalConfig = EvalConfig()
    simulation: SimulationConfig = SimulationConfig()


def explain_error(exc: ValidationError) -> str:
    """A pydantic error as one line naming the key: ``unknown key 'fleet.x'`` or ``fleet.y: <message>``."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    return f"{loc}: {err['msg']}"


def parse_config(data: dict, overrides: dict | None = None) -> ExperimentConfig:
    """Validate a config dict (``overrides`` are dotted keys, e.g. ``{"strategy.name": "fedprox"}``)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise FlSimError(f"cannot set {dotted!r}: {p!r} is not a section")
        node[leaf] = value
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise FlSimError(f"invalid config: {explain_error(exc)}") from None
    from .models.presets import get_zoo

    zoo = get_zoo(cfg.zoo)
    for tier in cfg.fleet.tiers:
        if tier not in zoo.tiers:
            raise FlSimError(f"invalid config: fleet.tiers: unknown tier {tier!r}; allowed: {', '.join(zoo.tiers)}")
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """An experiment file: keys it leaves out take today's defaults."""
    return parse_config(_read_toml(path), overrides)


def _read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FlSimError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise FlSimError(f"malformed TOML in {path}: {exc}") from None


# Options whose default changed after they were added: a run's saved config.toml written before the option
# existed ran with the value here, not with today's default. (An option added with a default that keeps
# the old behaviour needs no entry: a saved config without it reads as that default.)
LEGACY_VALUES = {
    "strategy.akd.extra_questions": 0,  # saved configs without the key ran with no extra questions
}


def with_legacy_values(data: dict) -> dict:
    """A copy of a saved run config (TOML dict) with the ``LEGACY_VALUES`` of the options it predates."""
    data = copy.deepcopy(data)
    for dotted, value in LEGACY_VALUES.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                break
        else:
            node.setdefault(leaf, value)
    return data


def load_run_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """A run directory's saved ``config.toml``: what that run ran with (``LEGACY_VALUES`` for options it
    predates), so resuming it continues the same experiment."""
    return parse_config(with_legacy_values(_read_toml(path)), overrides)


def to_toml(cfg: ExperimentConfig) -> str:
    import tomli_w

    return tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))
