"""Named, validated model presets: the shared vision front-end, the cloud teacher and device tiers.

Every model is an Imp-style MLLM (``LlavaForConditionalGeneration``: SigLIP vision tower, MLP projector,
Phi decoder). All models share one frozen vision front-end (as CD-CCA shares BLIP-2's), so visual tokens
are a common currency between device and cloud; they differ in the language model (depth/width), in what
they were trained on (teacher: every domain; devices: source only) and in weight precision.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fl_sim import FlSimError

Precision = Literal["fp32", "bf16", "int8", "int4"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


USER_STAGE = ("user_steps", "user_lr", "user_shift")


class FrontendPreset(Strict):
    """SigLIP vision tower; one patch per grid cell (patch size = cell size)."""
    hidden: int = Field(gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    steps: int = Field(gt=0, description="stage-A attribute pretraining steps")
    batch_size: int = 64
    lr: float = 2e-3
    compositional: bool = Field(False, description=(
        "stage A on every combination of the domains' factors but the held-out ones "
        "(fl_sim.world.domains.compositional_cells), not on the four domains"))
    builtin_share: float = Field(0.0, ge=0, lt=1, description=(
        "with compositional: the share of stage-A samples drawn from the four built-in domains (the rest "
        "from the cells); the device tiers, trained on source alone, learn little on a front-end that "
        "saw source in 1 sample of 22"))
    user_steps: int = Field(3000, ge=0, description=(
        "stage A+ steps, run only when the experiment declares domains on disk: the user's images carry no "
        "per-cell labels, so the tower learns them from the answers, through a small classifier over the "
        "user's most frequent answers (fl_sim.models.answer_head), while built-in samples keep stage A's "
        "per-cell read-outs and tokens; 0 = the user's images never reach the front-end"))
    user_lr: float = Field(2e-3, gt=0, description="stage A+ learning rate of the tower (the heads: 2e-3)")
    user_shift: int = Field(2, ge=0, description=(
        "each user image is moved by up to this many pixels each way (edges repeated), fresh each time a "
        "model trains on it (stage A+, the teacher's stage B), so they learn what is drawn rather than where "
        "the train pictures happen to put it; small against the 48-pixel picture, so an answer about "
        "position keeps its meaning; 0 = as stored"))

    def key(self) -> dict:
        """Stage A+ settings are left out: they count (in the zoo's cache key) only when user domains exist."""
        return {k: v for k, v in _key(self).items() if k not in USER_STAGE}

    def user_stage(self) -> dict:
        return {k: getattr(self, k) for k in USER_STAGE}

    @model_validator(mode="after")
    def _share_needs_cells(self):
        if self.builtin_share and not self.compositional:
            raise ValueError("builtin_share applies to a compositional front-end only")
        return self


class ModelPreset(Strict):
    """A language model on top of the shared front-end, with its training recipe and precision."""
    role: Literal["teacher", "device"]
    hidden: int = Field(gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    precision: Precision = "fp32"
    group_size: int = Field(32, gt=0, description="int4 quantisation group (input channels)")
    steps: int = Field(gt=0, description="stage-B training steps")
    batch_size: int = 64
    lr: float = 1e-3
    domain_weights: dict[str, float] | None = Field(
        None, description="teacher only: relative share of each domain in its training stream (default 1 each)")
    compositional: bool = Field(False, description=(
        "teacher only: train on every combination of the domains' factors but the held-out ones "
        "(fl_sim.world.domains.compositional_cells): a generalist, not a specialist of the four domains"))
    description: str = ""

    def key(self) -> dict:
        return _key(self)

    @model_validator(mode="after")
    def _check_weights(self):
        if self.compositional and (self.role != "teacher" or self.domain_weights is not None):
            raise ValueError("compositional applies to the teacher only, without domain_weights")
        if self.domain_weights is None:
            return self
        from fl_sim.world.domains import DOMAINS

        if self.role != "teacher":
            raise ValueError("domain_weights applies to the teacher only (device tiers train on source)")
        for d, w in self.domain_weights.items():
            if d not in DOMAINS:
                raise ValueError(f"unknown domain {d!r} in domain_weights; allowed: {', '.join(DOMAINS)}")
            if not w > 0:
                raise ValueError(f"domain_weights[{d!r}] must be > 0, got {w}")
        return self


def _key(preset: Strict) -> dict:
    """What identifies a preset in cache keys: its fields, ``compositional`` and ``builtin_share`` only
    when set (so the presets that predate them keep their cached models)."""
    d = preset.model_dump()
    for field in ("compositional", "builtin_share"):
        if not d.get(field):
            d.pop(field, None)
    return d


class ZooPreset(Strict):
    """A complete world of models: front-end, teacher, and named device tiers."""
    frontend: FrontendPreset
    teacher: ModelPreset
    tiers: dict[str, ModelPreset]
    description: str = ""


def _tier(hidden, layers, heads, precision, steps, desc):
    return ModelPreset(role="device", hidden=hidden, layers=layers, heads=heads, precision=precision,
                       steps=steps, description=desc)


ZOOS: dict[str, ZooPreset] = {
    "default": ZooPreset(
        description="teacher (Phi 256x4, fp32, all domains) and three phone tiers trained on source only",
        frontend=FrontendPreset(hidden=128, layers=2, heads=4, steps=1500),
        teacher=ModelPreset(role="teacher", hidden=256, layers=4, heads=4, steps=2000, lr=5e-4,
                            domain_weights={"dusk": 1.5, "digits": 2.5},
                            description="cloud teacher, all domains (more of the hard ones)"),
        tiers={
            "phone-high": _tier(96, 2, 4, "bf16", 2400, "high-end phone: 96x2, bf16 weights"),
            "phone-mid": _tier(80, 2, 4, "int8", 2400, "mid-range phone: 80x2, int8 per-channel"),
            "phone-low": _tier(64, 2, 4, "int4", 2400, "low-end phone: 64x2, int4 group-32"),
        },
    ),
    "generalist": ZooPreset(
        description="default's tiers, with a front-end and a teacher trained on every combination of shape set, "
                    "palette, lighting and noise except novel+dusk and digits+dusk (held out to test them); "
                    "half the front-end's samples come from the four built-in domains",
        frontend=FrontendPreset(hidden=128, layers=2, heads=4, steps=1500, compositional=True, builtin_share=0.5),
        teacher=ModelPreset(role="teacher", hidden=256, layers=4, heads=4, steps=2500, lr=5e-4, compositional=True,
                            description="cloud teacher, a generalist of the compositional world"),
        tiers={
            "phone-high": _tier(96, 2, 4, "bf16", 2400, "high-end phone: 96x2, bf16 weights"),
            "phone-mid": _tier(80, 2, 4, "int8", 2400, "mid-range phone: 80x2, int8 per-channel"),
            "phone-low": _tier(64, 2, 4, "int4", 2400, "low-end phone: 64x2, int4 group-32"),
        },
    ),
    "tiny": ZooPreset(
        description="seconds-to-train models for tests and smoke runs (accuracy is not meaningful)",
        frontend=FrontendPreset(hidden=32, layers=1, heads=2, steps=20, batch_size=32, user_steps=10),
        teacher=ModelPreset(role="teacher", hidden=64, layers=2, heads=2, steps=30, batch_size=32),
        tiers={
            "tiny-high": _tier(32, 1, 2, "bf16", 20, "tiny tier, bf16"),
            "tiny-low": _tier(16, 1, 2, "int4", 20, "tiny tier, int4 group-32"),
        },
    ),
}


def get_zoo(name: str) -> ZooPreset:
    if name not in ZOOS:
        raise FlSimError(f"unknown model zoo preset {name!r}; allowed: {', '.join(ZOOS)}")
    return ZOOS[name]
