"""``[strategy.uts]``, ``[strategy.akd]``, ``[strategy.dwc]``: the settings of CD-CCA's three mechanisms."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from fl_sim.config.section import Section


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
    upload: Literal["tokens", "images", "regions"] = Field("tokens", description=(
        '"images" = raw-image baseline; "regions" = the image regions of the kept tokens (what a tier whose '
        'tower is not the teacher\'s uploads instead of "tokens")'))
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
    max_new_tokens: int = Field(28, ge=1, description=(
        "teacher answer length; the teacher's prompt, the answer and EOS must fit its positions (its config's, "
        "checked before the run starts)"))
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
        "the teacher labels with int8 dynamic quantisation (torch's CPU backend; fp32 on a GPU): faster labelling, "
        "pseudo-labels that may differ from fp32's (docs/results.md)"))
    teacher_states: Literal["generation", "forward"] = Field("generation", description=(
        "where the teacher's distilled logits and hidden states come from: its greedy generation itself "
        '(no second pass) or "forward", a second pass over prompt + answer (a few values differ in their last '
        "fp16 bit)"))
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field("auto", description=(
        "Ray actors that train the tiers' adapters side by side with the cloud process, each tier single-"
        'threaded (fl_sim/cloud/actors.py); "auto" = one per tier beyond the first on a CPU with 2+ cores, none '
        "on a GPU; 0 = every tier in the cloud process on its threads (the same adapters, bitwise)"))

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
