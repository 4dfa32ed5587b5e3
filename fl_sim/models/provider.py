"""Where a run's models come from: the zoo's presets, local checkpoint directories, or tiers derived from one.

``[models]`` in an experiment names, per role, a Hugging Face checkpoint directory (``models.teacher``,
``models.tiers.NAME = "DIR"``) or a tier derived from one (``models.tiers.NAME = {checkpoint = "DIR",
quantize = "int4", drop_layers = 1}``: built once into the cache, keyed by the source's content hash and
the recipe). The zoo supplies the roles the experiment does not name. Each model is recorded in the run
directory's ``models.json`` with its path and content hash, so resuming notices a changed checkpoint.

What a checkpoint must be: a model of a family ``fl_sim.models.families`` runs (``VLM_TYPES``: LLaVA,
Idefics3/SmolVLM, Qwen2-VL, Gemma 3, LLaVA-OneVision; loaded with ``AutoModelForImageTextToText``) with any
vision tower and decoder transformers builds. With its own
processor saved beside it (tokenizer, image processor, chat template) it reads questions and images its own
way (``fl_sim.models.prompts``), as the zoo's own directories do; without one it must fit the shared
word tokenizer and the built-in world's 9 visual tokens. ``check_model_dirs`` reads ``config.json`` and
``fl_sim.app.preflight.check_loadable`` the processors, before Ray starts, and say what is wrong in one line.
LoRA targets are found from the model (``adapters.language_model_targets``), whatever its decoder family.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from fl_sim import FlSimError

log = logging.getLogger(__name__)

RECORD = "models.json"
_WARNED: set[str] = set()  # size warnings given in this process
# the model types fl_sim.models.families runs (read here without importing torch)
VLM_TYPES = ("gemma3", "idefics3", "llava", "llava_onevision", "qwen2_5_vl", "qwen2_vl", "smolvlm")
WEIGHT_SUFFIXES = (".safetensors", ".json", ".model", ".txt", ".jinja")  # what makes up a checkpoint's content


def _read_config(role: str, path: str) -> dict:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FlSimError(f"models.{role} = {path!r}: {p.resolve()} is not a directory")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise FlSimError(f"models.{role} = {path!r}: not a Hugging Face checkpoint (no config.json in {p.resolve()})")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise FlSimError(f"models.{role} = {path!r}: config.json does not parse ({exc})") from None
    if not isinstance(cfg, dict):
        raise FlSimError(f"models.{role} = {path!r}: config.json is not an object")
    if not any(f.suffix == ".safetensors" for f in p.iterdir()):
        raise FlSimError(f"models.{role} = {path!r}: no .safetensors weights in {p.resolve()}")
    return cfg


def check_weights(role: str, path: str) -> None:
    """Every ``.safetensors`` file of the checkpoint ``path`` is whole: its header parses and its data covers
    what the header promises (a truncated copy), read without loading a tensor or importing torch."""
    from safetensors import safe_open

    for f in sorted(Path(path).expanduser().glob("*.safetensors")):
        try:
            with safe_open(str(f), "np"):
                pass
        except Exception as exc:  # noqa: BLE001 - whatever the file is, it is not whole safetensors
            raise FlSimError(f"models.{role} = {path!r}: {f.name} is not whole safetensors ({exc})") from None


def _size(cfg: dict) -> int:
    """Rough parameter count of a checkpoint's language model from its config (for the size warning)."""
    t = cfg.get("text_config") or {}
    h, layers = int(t.get("hidden_size", 0)), int(t.get("num_hidden_layers", 0))
    inter = int(t.get("intermediate_size", 4 * h))
    return layers * (4 * h * h + 2 * h * inter) + int(t.get("vocab_size", 0)) * h


def check_checkpoint(role: str, path: str) -> dict:
    """``config.json`` of the checkpoint ``path`` for ``role``, checked to be a vision-language model
    fl-sim can run; one ``FlSimError`` naming the role and path otherwise."""
    cfg = _read_config(role, path)
    mtype = cfg.get("model_type")
    if "vision_config" not in cfg or "text_config" not in cfg:
        raise FlSimError(f"models.{role} = {path!r}: model type {mtype!r} is not a vision-language model "
                         "(its config has no vision_config and text_config)")
    if mtype not in VLM_TYPES:
        raise FlSimError(f"models.{role} = {path!r}: model type {mtype!r} is not supported; fl-sim runs "
                         f"{', '.join(VLM_TYPES)} checkpoints")
    image_token = cfg.get("image_token_index", cfg.get("image_token_id"))
    if image_token is None:
        raise FlSimError(f"models.{role} = {path!r}: the checkpoint names no image token (image_token_index)")
    from fl_sim.models.processor_files import check_processor_files, has_own_processor

    folder = Path(path).expanduser()
    if has_own_processor(folder):
        try:
            check_processor_files(folder, image_token)
        except FlSimError as exc:
            raise FlSimError(f"models.{role} = {path!r}: {str(exc).removeprefix(f'{folder}: ')}") from None
    return cfg


def check_model_dirs(models) -> None:
    """Every directory ``models`` (a ``ModelsConfig``) names, before anything heavy starts; warns when a
    device tier is larger than the teacher."""
    configs = {}
    if models.teacher:
        configs["teacher"] = check_checkpoint("teacher", models.teacher)
        check_weights("teacher", models.teacher)
    for name, spec in models.tiers.items():
        path = spec if isinstance(spec, str) else spec.checkpoint
        configs[name] = cfg = check_checkpoint(f"tiers.{name}", path)
        check_weights(f"tiers.{name}", path)
        if not isinstance(spec, str) and spec.backend == "torchao":
            from fl_sim.models.lowbit import require_torchao

            require_torchao(f"models.tiers.{name}")
        if not isinstance(spec, str) and spec.drop_layers:
            layers = int((cfg.get("text_config") or {}).get("num_hidden_layers", 0))
            if spec.drop_layers >= layers:
                raise FlSimError(f"models.tiers.{name}.drop_layers = {spec.drop_layers}: the checkpoint has only "
                                 f"{layers} decoder layers")
    if "teacher" in configs:
        for name, cfg in configs.items():
            said = (name, models.tiers.get(name) if name != "teacher" else None, models.teacher)
            if name != "teacher" and _size(cfg) > _size(configs["teacher"]) and str(said) not in _WARNED:
                _WARNED.add(str(said))  # the CLI checks a run, and run_experiment checks it again
                log.warning("models.tiers.%s is larger than the teacher (%d vs %d language-model parameters)",
                            name, _size(cfg), _size(configs["teacher"]))




def content_hash(path: str | Path) -> str:
    """SHA-256 (first 16 hex digits) over the names and bytes of a checkpoint's files (weights, configs,
    tokenizer and processor files), in name order."""
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file() and f.suffix in WEIGHT_SUFFIXES and f.name != "MANIFEST.json":
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def derive_tier(name: str, spec, cache_dir: str | None) -> Path:
    """The cache folder of tier ``name`` derived from ``spec`` (a ``DerivedTier``), built once."""
    import torch

    from fl_sim.cache import cache_root, get_or_build, stable_hash
    from fl_sim.models import lowbit
    from fl_sim.models.families import family_of
    from fl_sim.models.mllm import count_params, load_mllm
    from fl_sim.models.prompts import PROCESSOR_FILES
    from fl_sim.models.quantize import quantize_linears
    from fl_sim.models.zoo import device_size_bytes

    source = Path(spec.checkpoint).expanduser().resolve()
    recipe = spec.model_dump(exclude={"checkpoint"} | ({"backend"} if spec.backend == "simulated" else set()))
    key = stable_hash({"source": content_hash(source), "recipe": recipe})
    folder = cache_root(cache_dir) / "models" / f"derived-{key}"

    def build(tmp: Path) -> dict:
        model = load_mllm(source)
        lm = model.get_decoder()
        if spec.drop_layers:
            keep = len(lm.layers) - spec.drop_layers
            lm.layers = torch.nn.ModuleList(list(lm.layers)[:keep])
            model.config.get_text_config().num_hidden_layers = keep
        parts = [quantize_linears(m, spec.quantize, spec.group_size)
                 for m in (lm, family_of(model).connector_module(model), model.lm_head)]
        if spec.backend == "torchao":  # the int8 values above, held as int8 tensors wherever the tier loads
            lowbit.mark(model)
        model.save_pretrained(tmp)
        for f in PROCESSOR_FILES:
            if (source / f).is_file():
                (tmp / f).write_bytes((source / f).read_bytes())
        return {"role": name, "derived_from": str(source), "source_hash": content_hash(source), "recipe": recipe,
                "params": count_params(model), "precision": spec.quantize,
                "device_bytes": device_size_bytes(model, sum(p["packed_linear_bytes"] for p in parts)),
                "fp32_bytes": 4 * count_params(model)}

    get_or_build(folder, build, f"tier {name} derived from {source}")
    return folder


def resolve_models(cfg, zoo_paths: dict[str, Path] | None) -> dict[str, str]:
    """``role -> checkpoint directory`` of the run ``cfg``: the teacher and its device tiers (``models`` first,
    the zoo for the rest)."""
    m = cfg.models
    out = {}
    if m.teacher:
        out["teacher"] = str(Path(m.teacher).expanduser().resolve())
    elif zoo_paths is not None:
        out["teacher"] = str(zoo_paths["teacher"])
    if m.tiers:
        for name, spec in m.tiers.items():
            out[name] = str(Path(spec).expanduser().resolve()) if isinstance(spec, str) \
                else str(derive_tier(name, spec, cfg.cache_dir))
    elif zoo_paths is not None:
        out |= {k: str(v) for k, v in zoo_paths.items() if k not in ("teacher", "frontend")}
    return out


def record(run_dir: Path, paths: dict[str, str]) -> None:
    """Write ``models.json`` (role -> path and content hash); on a resumed run, refuse a changed model."""
    now = {role: {"path": p, "sha256_16": content_hash(p)} for role, p in paths.items()}
    f = Path(run_dir) / RECORD
    if f.is_file():
        try:
            before = json.loads(f.read_text())
        except (OSError, ValueError):
            before = {}
        for role, info in now.items():
            old = before.get(role)
            if old and old.get("sha256_16") != info["sha256_16"]:
                raise FlSimError(f"the {role} checkpoint {info['path']} changed since {run_dir} started (content hash "
                                 f"{old.get('sha256_16')} -> {info['sha256_16']}); resume with the same model or "
                                 "start a new run (--set name=...)")
    f.write_text(json.dumps(now, indent=1, sort_keys=True))
