"""Experiment configuration: a TOML file validated into ``ExperimentConfig``.

Unknown keys and bad values are errors naming the key (``fleet.num_devices: ...``); the CLI prints
them as one line.
"""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from fl_sim import FlSimError
from fl_sim.world.domains import DOMAINS, SHIFTED, domain_error


class Section(BaseModel):
    """A config section: unknown keys, NaN and infinities are errors, a boolean is not a number, and no
    string holds a NUL character (it cannot be part of a path)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, data):
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if field is not None and _takes_number(field.annotation) and _has_bool(value):
                    raise ValueError(f"{key}: expected a number, got a boolean ({value!r})")
                if isinstance(value, str) and "\x00" in value:
                    raise ValueError(f"{key}: contains a NUL character")
        return data


def _takes_number(annotation) -> bool:
    """Whether a field holds ints or floats (alone, in an optional, a tuple, or as a dict's values)."""
    import typing

    return annotation in (int, float) or any(_takes_number(a) for a in typing.get_args(annotation))


def _has_bool(value) -> bool:
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value))


class UTSConfig(Section):
    """``[strategy.uts]``: what devices upload."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    method: Literal["off", "random", "confidence", "entropy", "margin"] = Field(
        "confidence", description='stage-1 score; "off" uploads every sample')
    normalize: bool = Field(True, description="confidence per answer token (geometric mean), not the product")
    stratify: bool = Field(True, description=(
        "share the budget by question type, rank within each type (not for random)"))
    power: float | None = Field(None, gt=0, description="draw samples with p ~ uncertainty**power, not the top")
    budget: float = Field(0.25, gt=0, le=1, description="max share of a round's samples uploaded")
    min_uncertainty: float | None = Field(None, description=(
        "upload only samples more uncertain than this (not with method = random)"))
    tokens: Literal["off", "mc_dropout", "novelty"] = Field("novelty", description='stage-2 score; "off" = all')
    keep_tokens: float = Field(0.5, gt=0, le=1, description="share of visual tokens kept per sample")
    mc_passes: int = Field(8, ge=2)
    mc_p: float = Field(0.1, gt=0, lt=1)
    upload: Literal["tokens", "images"] = Field("tokens", description='"images" = raw-image baseline')
    token_bits: Literal[2, 4, 8, 16] = Field(4, description=(
        "4-bit (or 2-bit, or int8) tokens with per-token scales, or float16"))

class AKDConfig(Section):
    """``[strategy.akd]``: cloud distillation per round and tier (a zero weight switches a term off)."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    steps: int = Field(100, ge=0, description="adapter training steps per tier per round")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    w_ce: float = Field(1.0, ge=0, description="CE on teacher pseudo-labels")
    w_kl: float = Field(1.0, ge=0, description="logit distillation (KL with temperature)")
    w_feat: float = Field(0.5, ge=0, description="feature distillation (MSE after a learned projection)")
    temperature: float = Field(2.0, gt=0)
    replay: int = Field(512, ge=0, description="replay buffer capacity (samples); 0 = no replay")
    max_new_tokens: int = Field(28, ge=1, le=40, description=(
        "teacher answer length; with EOS and the prompt it must fit the model's 64 positions"))
    min_teacher_confidence: float = Field(0.0, ge=0, le=1, description=(
        "distil only samples the teacher answers with at least this confidence (0 = all)"))
    anchor: float = Field(0.5, ge=0, lt=1, description=(
        "share of each batch drawn from the cloud's own labelled source data (CE on true answers, no "
        "distillation) against forgetting the source domain; 0 = off (the paper's AKD)"))
    anchor_size: int = Field(512, ge=1, description="source samples the cloud keeps for anchoring")
    extra_questions: int = Field(2, ge=0, le=5, description=(
        "per uploaded image, the teacher captions it and is asked up to this many more questions (distinct "
        "VQA families) generated from its caption; the answers are distilled too (0 = off, the paper's AKD)"))
    cloud_ms_per_sample: float = Field(1.0, ge=0, description="virtual cloud time per teacher/student sample pass")
    teacher_int8: bool = Field(False, description=(
        "the teacher labels with int8 dynamic quantisation (torch's CPU backend; fp32 on a GPU): 1.75x faster "
        "labelling, 99.5 % identical pseudo-labels (benchmarks/teacher_int8.py)"))
    teacher_states: Literal["generation", "forward"] = Field("generation", description=(
        "where the teacher's distilled logits and hidden states come from: its greedy generation itself "
        '(no second pass; 2.4x faster labelling, benchmarks/teacher_states.py) or "forward", a second pass over '
        "prompt + answer (the values before this option; 0.1-0.2 % of them differ in their last fp16 bit)"))
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field("auto", description=(
        "processes that train the tiers' adapters side by side with the cloud process, each tier single-"
        'threaded (fl_sim/cloud/worker_pool.py); "auto" = one per tier beyond the first on a CPU with 2+ cores, none '
        "on a GPU; 0 = every tier in the cloud process on its threads (bitwise the same adapters for the "
        "default zoo: benchmarks/parallel_akd.py)"))

    @model_validator(mode="after")
    def _some_loss(self):
        if self.w_ce + self.w_kl + self.w_feat <= 0:
            raise ValueError("at least one of w_ce, w_kl, w_feat must be > 0")
        return self

class DWCConfig(Section):
    """``[strategy.dwc]``: how the cloud compresses a downlink delta (both switches off = dense fp32)."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    select: bool = Field(True, description="keep only the entries holding `energy` of the delta's energy")
    selection: Literal["top", "random"] = Field("top", description=(
        'which entries: "top" = the largest (energy, max_density, block), "random" = a seeded pseudo-random '
        "max_density share the device regenerates (no index bytes; energy and block unused)"))
    energy: float = Field(0.9, gt=0, le=1, description="target share of sum(delta**2) kept")
    max_density: float = Field(0.05, gt=0, le=1, description="cap on the kept share of entries")
    block: int = Field(1, ge=1, le=4096, description=(
        "select blocks of this many consecutive entries (1 = single entries): fewer index bytes per value"))
    quantize: bool = Field(True, description="quantise kept values (sign + magnitude)")
    bits: Literal[2, 3, 4, 8] = Field(3, description="bits per quantised value, its sign included")
    group_size: int = Field(64, ge=1, description="values per float16 quantisation scale")
    error_feedback: bool = Field(True, description="carry what was not sent into the next round")
    sparse_train: bool = Field(False, description=(
        "the cloud trains only the entries the payload can carry: a short dense probe (probe_steps) picks "
        "the max_density share with the largest |probe change + residual| (selection = \"random\": the "
        "payload's seeded entries, no probe), then AKD trains those alone"))
    probe_steps: int = Field(20, ge=1, description="dense AKD steps that pick the entries sparse_train trains")


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
        "forward passes: auto = bf16 autocast on CUDA, fp32 on the CPU (bf16 is slower there and changes the "
        "figures); fp32; bf16 (autocast wherever the models run)"))
    num_gpus_per_client: float = Field(0.0, ge=0, description=(
        "GPU share of each virtual client (Flower client resources; fractional: 0.25 = four clients per GPU). "
        "With 0 the devices' models run on the CPU"))
    check_capacity: bool = Field(True, description=(
        "refuse a run whose estimated memory or disk (fl_sim.app.capacity) exceeds what this machine has; "
        "false on a cluster, where the workers' memory is elsewhere"))


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


def declared(info: ValidationInfo) -> tuple[str, ...]:
    """The user domains (``[domains.NAME]``) of the config being validated (``ExperimentConfig.of``)."""
    return tuple((info.context or {}).get("domains", ()))


class UserDomainConfig(Section):
    """``[domains.NAME]``: a dataset on disk as a domain (``fl_sim.world.user_data``)."""
    path: str = Field(min_length=1, description=(
        "a folder written by datasets' save_to_disk (Dataset or DatasetDict), or an image folder with "
        "metadata.jsonl / metadata.csv (file_name plus the columns below)"))
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

    @classmethod
    def of(cls, data: dict) -> ExperimentConfig:
        """Validate ``data``, with its own ``[domains]`` as known domain names."""
        names = list(data.get("domains") or {}) if isinstance(data.get("domains"), dict) else []
        return cls.model_validate(data, context={"domains": names})

    @model_validator(mode="after")
    def _consistent(self):
        import re

        for d in self.domains:
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


PATH_KEYS = ("fleet.trace", "fleet.replay")  # files an experiment refers to


def _relative_to(folder: Path, value: str) -> str:
    p = Path(value).expanduser()
    return value if not value or p.is_absolute() else os.path.normpath(folder / p)


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """An experiment file: keys it leaves out take today's defaults. Relative paths in the file
    (``PATH_KEYS``) are relative to the file's folder; paths given as ``overrides`` to the current one."""
    path = Path(path)
    data = read_toml(path)
    here = path.parent.resolve()
    if isinstance(data.get("domains"), dict):  # datasets on disk, relative to the file too
        data["domains"] = {name: (dict(v) | {"path": _relative_to(here, v["path"])}
                                  if isinstance(v, dict) and isinstance(v.get("path"), str) else v)
                           for name, v in data["domains"].items()}
    models = data.get("models")
    if isinstance(models, dict):  # checkpoint directories, relative to the file too
        models = data["models"] = dict(models)
        if isinstance(models.get("teacher"), str):
            models["teacher"] = _relative_to(here, models["teacher"])
        if isinstance(models.get("tiers"), dict):
            tiers = models["tiers"] = dict(models["tiers"])
            for name, v in tiers.items():
                if isinstance(v, str):
                    tiers[name] = _relative_to(here, v)
                elif isinstance(v, dict) and isinstance(v.get("checkpoint"), str):
                    tiers[name] = dict(v) | {"checkpoint": _relative_to(here, v["checkpoint"])}
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            data[section] = dict(data[section]) | {key: os.path.normpath(os.path.join(path.parent.resolve(), value))}
    return parse_config(data, overrides)


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """A TOML file as a dict; a one-line ``FlSimError`` for anything that is not one."""
    path = Path(path)
    if path.is_dir():
        raise FlSimError(f"{what} {path} is a directory, not a TOML file")
    if not path.is_file():
        raise FlSimError(f"{what} not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FlSimError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise FlSimError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise FlSimError(f"{what} {path} is empty")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FlSimError(f"malformed TOML in {path}: {exc}") from None
    if not data:
        raise FlSimError(f"{what} {path} sets nothing (only comments)")
    return data


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
    return parse_config(with_legacy_values(read_toml(path)), overrides)


def to_toml(cfg: ExperimentConfig) -> str:
    import tomli_w

    return tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))
