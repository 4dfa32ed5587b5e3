"""The model zoo: pretrain (or load from cache) the front-end, the teacher and every device tier.

Cache layout under ``<cache>/models/``: one folder per model, keyed by a hash of everything that produced
it (world settings, presets, seed, tokenizer, the front-end's key). Each is a ``save_pretrained`` folder
(safetensors + config.json) sealed with a manifest holding training metrics and packed sizes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import FlSimError
from ..cache import cache_root, get_or_build, read_meta, stable_hash
from ..world.data import GENERATOR_VERSION
from ..world.domains import DOMAINS
from ..world.tokenizer import load_tokenizer
from .mllm import Prompter, build_frontend, build_mllm, count_params, load_mllm
from .presets import ModelPreset, ZooPreset, get_zoo
from .quantize import quantize_linears
from .train import train_answers, train_frontend

log = logging.getLogger(__name__)
RECIPE_VERSION = 2


@dataclass
class Zoo:
    """Loaded models: ``teacher`` and ``tiers`` (name -> model), with their metadata and the prompter."""
    name: str
    prompter: Prompter
    teacher: torch.nn.Module
    tiers: dict[str, torch.nn.Module]
    meta: dict[str, dict] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def models(self) -> dict[str, torch.nn.Module]:
        return {"teacher": self.teacher, **self.tiers}


def device_size_bytes(model, linear_bytes: int) -> int:
    """Bytes a device stores: packed LM/projector linears + other LM/projector params in fp16 + front-end in fp16."""
    lin_params = sum(m.weight.numel() for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and "vision_tower" not in n)
    other = count_params(model) - lin_params
    return linear_bytes + 2 * other


def _progress_factory(progress, label):
    if progress is None:
        return None
    task = progress.add_task(label, total=None)

    def update(step, total, loss):
        progress.update(task, completed=step, total=total, description=f"{label} loss {loss:.3f}")
    return update


def _train_model(folder: Path, role_name: str, preset: ModelPreset, zoo: ZooPreset, frontend_dir: Path,
                 cell_px: int, seed: int, tokenizer, progress) -> dict:
    from transformers import SiglipVisionModel

    torch.manual_seed(seed)
    model = build_mllm(preset, zoo.frontend, cell_px, tokenizer)
    model.model.vision_tower.load_state_dict(SiglipVisionModel.from_pretrained(frontend_dir).state_dict())
    domains = list(DOMAINS) if preset.role == "teacher" else ["source"]
    metrics = train_answers(model, Prompter(tokenizer), domains, preset.steps, preset.batch_size, preset.lr,
                            seed, cell_px, _progress_factory(progress, f"stage B {role_name}"))
    quant = quantize_linears(model.model.language_model, preset.precision, preset.group_size)
    proj = quantize_linears(model.model.multi_modal_projector, preset.precision, preset.group_size)
    head = quantize_linears(model.lm_head, preset.precision, preset.group_size)
    linear_bytes = quant["packed_linear_bytes"] + proj["packed_linear_bytes"] + head["packed_linear_bytes"]
    model.save_pretrained(folder)
    return {"role": preset.role, "preset": preset.model_dump(), "trained_on": domains, "train": metrics,
            "params": count_params(model), "lm_params": count_params(model.model.language_model),
            "precision": preset.precision, "device_bytes": device_size_bytes(model, linear_bytes),
            "fp32_bytes": 4 * count_params(model)}


def pretrain_zoo(name: str = "default", cell_px: int = 16, seed: int = 0, cache_dir: str | None = None,
                 overrides: dict[str, str] | None = None, progress=None) -> Zoo:
    """Pretrain (or load from cache) the models of zoo preset ``name``.

    ``overrides`` maps a role ("teacher" or a tier name) to a local Hugging Face checkpoint directory
    that replaces the preset (it must use the shared tokenizer's vocabulary).
    """
    zoo = get_zoo(name)
    overrides = overrides or {}
    for role in overrides:
        if role != "teacher" and role not in zoo.tiers:
            raise FlSimError(f"unknown model role {role!r} in overrides; allowed: teacher, {', '.join(zoo.tiers)}")
    root = cache_root(cache_dir) / "models"
    tokenizer = load_tokenizer(cache_dir)
    base = {"v": RECIPE_VERSION, "data": GENERATOR_VERSION, "cell_px": cell_px, "seed": seed,
            "vocab": tokenizer.get_vocab()}

    fe_key = stable_hash(base | {"frontend": zoo.frontend.model_dump()})
    fe_dir = root / f"frontend-{fe_key}"

    def build_fe(tmp: Path) -> dict:
        torch.manual_seed(seed)
        fe = build_frontend(zoo.frontend, cell_px)
        metrics = train_frontend(fe, zoo.frontend, cell_px, seed, _progress_factory(progress, "stage A front-end"))
        fe.save_pretrained(tmp)
        return {"role": "frontend", "train": metrics, "params": count_params(fe)}

    get_or_build(fe_dir, build_fe, "front-end")

    models, meta, paths = {}, {"frontend": read_meta(fe_dir)}, {"frontend": fe_dir}
    for role, preset in [("teacher", zoo.teacher), *zoo.tiers.items()]:
        if role in overrides:
            path = Path(overrides[role]).expanduser()
            models[role] = load_mllm(path, tokenizer)
            meta[role], paths[role] = {"role": role, "source": str(path), "params": count_params(models[role])}, path
            continue
        key = stable_hash(base | {"frontend": fe_key, "preset": preset.model_dump(), "role": role})
        folder = root / f"{role}-{key}"
        get_or_build(folder, lambda tmp, r=role, p=preset: _train_model(
            tmp, r, p, zoo, fe_dir, cell_px, seed, tokenizer, progress), role)
        models[role], meta[role], paths[role] = load_mllm(folder, tokenizer), read_meta(folder), folder
    teacher = models.pop("teacher")
    return Zoo(name, Prompter(tokenizer), teacher, models, meta, paths)


def zoo_summary(zoo: Zoo) -> list[dict]:
    """One row per model: role, params, precision, stored size (MB) and training time."""
    rows = []
    for role, m in zoo.meta.items():
        rows.append({"model": role, "params": m.get("params"), "precision": m.get("precision", "fp32"),
                     "trained_on": ",".join(m.get("trained_on", [])) or "-",
                     "device_MB": round(m["device_bytes"] / 1e6, 3) if "device_bytes" in m else None,
                     "train_s": round(m.get("train", {}).get("seconds", 0.0), 1)})
    return rows
