"""``ExperimentConfig``: one experiment's validated settings, and the one-line explanation of a bad one."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, model_validator

from fl_sim import FlSimError
from fl_sim.config.cloud import CloudConfig
from fl_sim.config.fleet import FleetConfig
from fl_sim.config.mechanisms import AKDConfig, DWCConfig, UTSConfig
from fl_sim.config.section import Section
from fl_sim.world.domains import DOMAINS


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
    cloud_lag: int = Field(0, ge=0, le=1, description=(
        "1: devices start round r+1 while the cloud distils round r's uploads on its actors, and receive that "
        "update a round later (the last round waits for its cloud); 0: the cloud finishes before the next round"))

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
    num_nodes: int | None = Field(None, ge=1, description=(
        "Flower SuperNodes; each emulates whichever device its message names (default: as many as one round "
        "messages, clients_per_round x over_commit, at most the fleet)"))
    threads_per_client: int = Field(1, ge=1)
    warm_up: bool = Field(True, description=(
        "Ray workers import the device code and load every tier model and domain split while nodes are "
        "mapped, before round 1 (the cost is logged as the warm-up phase, not charged to round 1)"))
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$", description=(
        "where the server runs teacher labelling, AKD, DWC and evaluation: auto (CUDA when available), cpu, "
        "cuda or cuda:N (fl_sim.models.placement)"))
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description=(
        "forward passes: auto = bf16 autocast on CUDA, fp32 on the CPU (bf16 changes the figures); fp32; bf16 "
        "(autocast wherever the models run)"))
    num_gpus_per_client: float = Field(0.0, ge=0, description=(
        "GPU share of each virtual client (Flower client resources; fractional: 0.25 = four clients per GPU). "
        "With 0 the devices' models run on the CPU"))
    check_capacity: bool = Field(True, description=(
        "refuse a run whose estimated memory or disk (fl_sim.app.capacity) exceeds what this machine has; "
        "false on a cluster, where the workers' memory is elsewhere"))


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class UserDomainConfig(Section):
    """``[domains.NAME]``: a dataset on disk as a domain (``fl_sim.world.user_data``)."""
    path: str = Field(min_length=1, description=(
        "a folder written by datasets' save_to_disk; any folder datasets' load_dataset reads (an image folder "
        "with metadata.jsonl / metadata.csv, at its top or in split sub-folders; parquet, JSON-lines or CSV "
        "files named by split); or one parquet / JSON-lines / CSV file (fl_sim.world.user_sources)"))
    format: Literal["auto", "imagefolder", "parquet", "json", "csv"] = Field("auto", description=(
        "the datasets builder for a folder: auto = inferred from its files; json for JSON-lines beside the "
        "images they name"))
    image: str = Field("image", min_length=1, description="image column")
    question: str = Field("question", min_length=1, description="question column")
    answer: str = Field("answer", min_length=1, description="answer column")
    question_type: str | None = Field(None, min_length=1, description="optional column: per-type accuracy")
    test_split: str = Field("test", min_length=1, description="the split to test on, when the dataset has it")
    test_fraction: float = Field(0.2, gt=0, lt=1, description=(
        "without a test split: the share of images held out for testing (all questions of an image on one "
        "side; seeded by the domain's name only, so every run tests on the same images)"))


class DerivedTier(Section):
    """A device tier made from a checkpoint (``fl_sim.models.provider``): its language model, projector and
    output layer quantised to ``quantize`` (simulated low-bit weights, as the zoo's tiers), optionally with
    its last ``drop_layers`` decoder layers removed."""
    checkpoint: str = Field(min_length=1, description="a local Hugging Face checkpoint directory")
    quantize: Literal["fp32", "bf16", "int8", "int4"] = Field("int8", description=(
        "int8: per output channel; int4: in groups of group_size; symmetric"))
    group_size: int = Field(32, ge=1)
    drop_layers: int = Field(0, ge=0, description="decoder layers removed from the top of the language model")
    backend: Literal["simulated", "torchao"] = Field("simulated", description=(
        "simulated: fp32 weights on the low-bit grid; torchao: the language model's linear layers held as real "
        "int8 weights (torchao, quantize = int8 only; fl_sim.models.lowbit)"))

    @model_validator(mode="after")
    def _torchao_int8(self):
        if self.backend == "torchao" and self.quantize != "int8":
            raise ValueError(f"backend = \"torchao\" takes quantize = \"int8\" (peft's LoRA runs on torchao int8 "
                             f"weights only), got {self.quantize!r}")
        return self


class ModelsConfig(Section):
    """Where the run's models come from: local checkpoint directories in place of the zoo's presets."""
    teacher: str | None = Field(None, min_length=1, description="the cloud teacher's checkpoint (default: the zoo's)")
    tiers: dict[str, str | DerivedTier] = Field(default_factory=dict, description=(
        "device tier name -> checkpoint directory, or a tier derived from one; given, these are the fleet's "
        "tiers (shares: fleet.tiers) instead of the zoo's"))


class ExperimentConfig(Section):
    name: str = Field("experiment", description=(
        "the experiment's folder under output_dir: letters, digits, '.', '_', '-' (not a path)"))
    seed: int = Field(0, ge=0, description="run seed: every random stream (devices, cloud, payloads) derives from it")
    rounds: int = Field(3, ge=1)
    zoo: str = "default"
    zoo_seed: int = Field(0, ge=0, description="seed the model zoo was pretrained with (independent of the run seed)")
    cache_dir: str | None = None
    output_dir: str = "runs"
    domains: dict[str, UserDomainConfig] = Field(default_factory=dict, description=(
        "domains backed by datasets on disk, by name (usable wherever a built-in domain is)"))
    models: ModelsConfig = ModelsConfig()
    fleet: FleetConfig = FleetConfig()
    strategy: StrategyConfig = StrategyConfig()
    eval: EvalConfig = EvalConfig()
    simulation: SimulationConfig = SimulationConfig()
    cloud: CloudConfig = CloudConfig()

    @classmethod
    def of(cls, data: dict) -> ExperimentConfig:
        """Validate ``data``, with its own ``[domains]`` as known domain names."""
        names = list(data.get("domains") or {}) if isinstance(data.get("domains"), dict) else []
        return cls.model_validate(data, context={"domains": names})

    @model_validator(mode="after")
    def _consistent(self):
        import re

        for d in self.domains:
            if not re.match(NAME_PATTERN, d) or ".." in d:
                raise ValueError(f"domains.{d[:60]!r}: a domain name is a plain name (letters, digits, '.', '_', "
                                 "'-'; at most 100), not a path: it names the converted data's folder")
            if d in DOMAINS or "+" in d:
                raise ValueError(f"domains.{d}: the name is taken by a built-in domain or looks like a combination "
                                 "(A+B); give the dataset another name")
        if not re.match(NAME_PATTERN, self.name) or ".." in self.name:
            raise ValueError(f"name {self.name!r} must be a plain name (letters, digits, '.', '_', '-'; at most 100), "
                             "not a path: it names the run's folder under output_dir")
        sched = self.fleet.schedule
        if sched is not None and sched.ramp_rounds[1] >= self.rounds:
            raise ValueError(f"fleet.schedule.ramp_rounds: a transition of {sched.ramp_rounds[1]} rounds is longer "
                             f"than the run ({self.rounds} rounds)")
        if not self.fleet.trace and self.strategy.clients_per_round > self.fleet.num_devices:
            raise ValueError(f"strategy.clients_per_round ({self.strategy.clients_per_round}) is larger than "
                             f"fleet.num_devices ({self.fleet.num_devices})")
        return self


def _sections(cls) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_sections(sub))]


def explain_error(exc: ValidationError) -> str:
    """A pydantic error as one line naming the key: ``unknown key 'fleet.x'`` or ``fleet.y: <message>``."""
    import re

    errs = exc.errors()
    # a value that fits no member of a union (a tier: a path or a table) fails once per member: the member
    # it was meant for is the one not failing on its type; the members' names are not keys
    err = next((e for e in errs if not e["type"].endswith("_type")), errs[0])
    members = {"str"} | {c.__name__ for c in _sections(Section)}
    loc = ".".join(str(p) for p in err["loc"] if p not in members and not re.fullmatch(r"[\w-]+\[.*\]", str(p)))
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    msg = err["msg"].removeprefix("Value error, ")
    if re.match(r"^[a-z_]+: ", msg):  # a section's validator named the key
        key, msg = msg.split(": ", 1)
        loc = f"{loc}.{key}" if loc else key
    return f"{loc}: {msg}" if loc else msg


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
        cfg = ExperimentConfig.of(data)
    except ValidationError as exc:
        raise FlSimError(f"invalid config: {explain_error(exc)}") from None
    tiers = tier_names(cfg)
    for tier in cfg.fleet.tiers:
        if tier not in tiers:
            raise FlSimError(f"invalid config: fleet.tiers: unknown tier {tier!r}; allowed: {', '.join(tiers)}")
    return cfg


def tier_names(cfg: ExperimentConfig) -> list[str]:
    """The run's device tiers: ``models.tiers`` when given, else the zoo's."""
    if cfg.models.tiers:
        return list(cfg.models.tiers)
    from fl_sim.models.presets import get_zoo

    return list(get_zoo(cfg.zoo).tiers)
