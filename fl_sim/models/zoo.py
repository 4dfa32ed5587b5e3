"""The model zoo: pretrain (or load from cache) the front-end, the teacher and every device tier.

Cache layout under ``<cache>/models/``: one folder per model, keyed by a hash of everything that produced
it (world settings, presets, seed, tokenizer, the front-end's key). Each is an ordinary checkpoint
directory: ``save_pretrained`` weights (safetensors + config.json) with their processor (the shared word
tokenizer, image processor and chat template: ``word_processor``), sealed with a manifest holding
training metrics and packed sizes. The fleet loads them like any other checkpoint (``provider``).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch

from fl_sim import FlSimError
from fl_sim.cache import cache_root, extend, get_or_build, read_meta, stable_hash, verify
from fl_sim.models.mllm import Prompter, build_frontend, build_mllm, count_params, load_mllm
from fl_sim.models.presets import ModelPreset, ZooPreset, get_zoo
from fl_sim.models.prompts import has_own_processor
from fl_sim.models.quantize import quantize_linears
from fl_sim.models.train import adapt_frontend, train_answers, train_frontend
from fl_sim.models.word_processor import save_processor
from fl_sim.world.catalog import NO_DOMAINS
from fl_sim.world.data import GENERATOR_VERSION
from fl_sim.world.domains import COMBINED, DOMAINS, compositional_cells
from fl_sim.world.tokenizer import load_tokenizer
from fl_sim.world.user_data import build as build_user

log = logging.getLogger(__name__)
RECIPE_VERSION = 2
USER_STAGE_VERSION = 5  # stage A+: the tower learns the (shifted) user images through an answer classifier
USER_RECIPE_VERSION = 4  # with user domains, the teacher trains twice the steps: half the samples the user's, shifted
# With user domains every model is re-fitted, not retrained: it starts from the same preset's model of the zoo
# without them (built first when missing), with the user's word rows appended, over the adapted front-end.
# A device tier trains 1/REFIT_SHARE of its steps on source (it learns the user's data in the fleet): from
# scratch, the small tiers' seed-sensitive recipe put phone-low on fruit at 36.0 % on source against the
# default zoo's 68.5 %. The teacher trains its whole user recipe again (twice its steps, half the user's):
# from scratch, fruit's teacher lost 3.3 points on digits (docs/notes.md, The zoos).
REFIT_SHARE = 4


def _refit_share(preset: ModelPreset) -> int:
    """The share of its steps a re-fitted model trains: all of them for the teacher, 1/REFIT_SHARE for a tier."""
    return 1 if preset.role == "teacher" else REFIT_SHARE


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
    from fl_sim.models.families import family_of

    fam = family_of(model)
    tower = {id(m) for m in fam.tower_module(model).modules()} - {id(m) for m in fam.connector_module(model).modules()}
    lin_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and id(m) not in tower)
    other = count_params(model) - lin_params
    return linear_bytes + 2 * other


def _progress_factory(progress, label):
    if progress is None:
        return None
    task = progress.add_task(label, total=None)

    def update(step, total, loss):
        progress.update(task, completed=step, total=total, description=f"{label} loss {loss:.3f}")
    return update


def _start(preset: ModelPreset, zoo: ZooPreset, cell_px: int, seed: int, tokenizer, refit_from: Path | None):
    """The model stage B starts from: freshly drawn, or ``refit_from``'s weights with the run's words added."""
    torch.manual_seed(seed)
    if refit_from is None:
        return build_mllm(preset, zoo.frontend, cell_px, tokenizer)
    model = load_mllm(refit_from)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if model.lm_head.weight is not model.model.language_model.embed_tokens.weight:
        raise RuntimeError("word embeddings are not tied")
    return model


def _train_model(folder: Path, role_name: str, preset: ModelPreset, zoo: ZooPreset, frontend_dir: Path,
                 cell_px: int, seed: int, tokenizer, progress, report=None, catalog=NO_DOMAINS,
                 refit_from: Path | None = None) -> dict:
    """Stage B of one model, saved to ``folder``; returns its manifest. ``refit_from``: the same role's folder in
    the zoo without user domains, re-fitted to this front-end and vocabulary (``_refit_share``)."""
    from transformers import SiglipVisionModel

    model = _start(preset, zoo, cell_px, seed, tokenizer, refit_from)
    model.model.vision_tower.load_state_dict(SiglipVisionModel.from_pretrained(frontend_dir).state_dict())
    domains = (compositional_cells() if preset.compositional else list(DOMAINS)) if preset.role == "teacher" \
        else ["source"]
    weights = [preset.domain_weights.get(d, 1.0) for d in domains] if preset.domain_weights else None
    steps = preset.steps if refit_from is None else max(1, preset.steps // _refit_share(preset))
    if preset.role == "teacher" and catalog:  # the user's domains together get as many samples as the
        w = weights or [1.0] * len(domains)   # built-in world (each alike), in added steps: the built-in
        n = len(catalog.names())              # domains keep theirs
        weights = w + [sum(w) / n] * n
        steps = round(preset.steps * sum(weights) / sum(w))
        domains = domains + catalog.names()
    metrics = train_answers(model, Prompter(tokenizer), domains, steps, preset.batch_size, preset.lr,
                            seed, cell_px, report or _progress_factory(progress, f"stage B {role_name}"),
                            weights=weights, catalog=catalog, shift=zoo.frontend.user_shift)
    quant = quantize_linears(model.model.language_model, preset.precision, preset.group_size)
    proj = quantize_linears(model.model.multi_modal_projector, preset.precision, preset.group_size)
    head = quantize_linears(model.lm_head, preset.precision, preset.group_size)
    linear_bytes = quant["packed_linear_bytes"] + proj["packed_linear_bytes"] + head["packed_linear_bytes"]
    model.save_pretrained(folder)
    save_processor(folder, tokenizer, model.config.vision_config)
    trained_on = [f"compositional: {len(domains)} cells, not {', '.join(COMBINED)}"] if preset.compositional \
        else domains
    refit = {} if refit_from is None else {"refit_from": refit_from.name}
    return {"role": preset.role, "preset": preset.model_dump(), "trained_on": trained_on, "train": metrics, **refit,
            "params": count_params(model), "lm_params": count_params(model.model.language_model),
            "precision": preset.precision, "device_bytes": device_size_bytes(model, linear_bytes),
            "fp32_bytes": 4 * count_params(model)}


def _cost(preset: ModelPreset) -> float:
    """Relative training cost of a preset: steps x (per-step overhead + LM matmul work)."""
    return preset.steps * preset.batch_size * (64 * 64 * 4 + preset.hidden ** 2 * preset.layers)


def _chains(jobs: list, workers: int) -> list[list]:
    """Split ``(role, preset, folder, refit_from)`` jobs into ``workers`` chains of similar cost (longest first)."""
    chains: list[list] = [[] for _ in range(min(workers, len(jobs)))]
    load = [0.0] * len(chains)
    for job in sorted(jobs, key=lambda j: -_cost(j[1])):
        i = load.index(min(load))
        chains[i].append(job)
        load[i] += _cost(job[1])
    return chains


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _build_chain(chain: list, zoo_name: str, fe_dir: str, cell_px: int, seed: int, cache_dir: str | None,
                 queue, catalog) -> None:
    """Worker process: train and cache each ``(role, preset, folder, refit_from)`` of ``chain`` in turn
    (``catalog``: the parent's domains on disk, so the same vocabulary and data)."""
    zoo, tokenizer = get_zoo(zoo_name), load_tokenizer(cache_dir, catalog=catalog)
    for role, preset, folder, refit_from in chain:
        def report(step, total, loss, r=role):
            if step == 1 or step == total or step % 20 == 0:
                queue.put((r, step, total, loss))
        get_or_build(Path(folder), lambda tmp, r=role, p=preset, rep=report, w=refit_from: _train_model(
            tmp, r, p, zoo, Path(fe_dir), cell_px, seed, tokenizer, None, rep, catalog, w and Path(w)), role)


def _build_parallel(jobs: list, workers: int, zoo_name: str, fe_dir: Path, cell_px: int, seed: int,
                    cache_dir: str | None, progress, catalog) -> None:
    """Train ``jobs`` in ``workers`` spawned processes, each with this process's torch thread count, so
    every model is bit-identical to a sequential build (the thread count, not the schedule, fixes the
    order of floating-point sums). Progress comes back over a queue."""
    ctx = get_context("spawn")
    chains = _chains(jobs, workers)
    log.info("training %s in %d processes", ", ".join(j[0] for j in jobs), len(chains))
    tasks: dict[str, object] = {}

    def pump(queue):
        while (item := queue.get()) is not None:
            role, step, total, loss = item
            if progress is not None:
                if role not in tasks:
                    tasks[role] = _progress_factory(progress, f"stage B {role}")
                tasks[role](step, total, loss)

    # idle OpenMP threads sleep instead of spinning: two processes share the cores
    env_before = os.environ.get("OMP_WAIT_POLICY")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        with ctx.Manager() as manager:
            queue = manager.Queue()
            reader = threading.Thread(target=pump, args=(queue,), daemon=True)
            reader.start()
            try:
                with ProcessPoolExecutor(len(chains), mp_context=ctx, initializer=_init_worker,
                                         initargs=(torch.get_num_threads(),)) as ex:
                    futures = [ex.submit(_build_chain, [(r, p, str(f), w and str(w)) for r, p, f, w in chain], zoo_name,
                                         str(fe_dir), cell_px, seed, cache_dir, queue,
                                         catalog)
                               for chain in chains]
                    for f in futures:
                        f.result()
            finally:
                queue.put(None)
                reader.join(timeout=5)
    finally:
        if env_before is None:
            os.environ.pop("OMP_WAIT_POLICY", None)


def pretrain_zoo(name: str = "default", cell_px: int = 16, seed: int = 0, cache_dir: str | None = None,
                 overrides: dict[str, str] | None = None, progress=None, workers: int = 1,
                 roles: set[str] | None = None, catalog=NO_DOMAINS) -> Zoo:
    """Pretrain (or load from cache) the models of zoo preset ``name``.

    ``overrides`` maps a role ("teacher" or a tier name) to a local Hugging Face checkpoint directory
    that replaces the preset (it must use the shared tokenizer's vocabulary). Models missing from the
    cache train in ``workers`` spawned processes when ``workers > 1`` (1 = in this process; the CLI
    uses ``fl_sim.app.cli.default_pretrain_workers()``); the models are the same either way. A script calling this with
    ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard of spawned processes. ``roles``
    (default: all) limits the zoo to those roles (the others are neither trained nor loaded). With
    ``catalog`` (the run's domains on disk), every model is re-fitted from the same role of the zoo without
    them (the teacher with its whole user recipe, a tier in 1/``REFIT_SHARE`` of its steps), which is built
    first when the cache lacks it.
    """
    zoo = get_zoo(name)
    if workers < 1:
        raise FlSimError(f"workers must be >= 1, got {workers}")
    overrides = overrides or {}
    for role in overrides:
        if role != "teacher" and role not in zoo.tiers:
            raise FlSimError(f"unknown model role {role!r} in overrides; allowed: teacher, {', '.join(zoo.tiers)}")
    tokenizer, fe_dir, folders = _build_zoo(name, cell_px, seed, cache_dir, set(overrides), progress, workers,
                                            roles, catalog)
    models, meta, paths = {}, {"frontend": read_meta(fe_dir)}, {"frontend": fe_dir}
    for role in [r for r in ["teacher", *zoo.tiers] if roles is None or r in roles]:
        if role in overrides:
            path = Path(overrides[role]).expanduser()
            models[role] = load_mllm(path, tokenizer)
            meta[role], paths[role] = {"role": role, "source": str(path), "params": count_params(models[role])}, path
            continue
        folder = folders[role]
        models[role], meta[role], paths[role] = load_mllm(folder, tokenizer), read_meta(folder), folder
        if not has_own_processor(folder):  # cached before zoo models carried their processor
            extend(folder, lambda f, m=models[role]: save_processor(f, tokenizer, m.config.vision_config))
    teacher = models.pop("teacher")
    return Zoo(name, Prompter(tokenizer), teacher, models, meta, paths)


def _build_zoo(name: str, cell_px: int, seed: int, cache_dir: str | None, overridden: set[str], progress,
               workers: int, roles: set[str] | None, catalog) -> tuple[object, Path, dict[str, Path]]:
    """Train what the cache lacks of zoo ``name``'s front-end and models (but the ``overridden`` roles);
    return the tokenizer, the front-end's folder and each trained role's folder."""
    zoo = get_zoo(name)
    root = cache_root(cache_dir) / "models"
    tokenizer = load_tokenizer(cache_dir, catalog=catalog)
    base = {"v": RECIPE_VERSION, "data": GENERATOR_VERSION, "cell_px": cell_px, "seed": seed,
            "vocab": tokenizer.get_vocab()}
    if catalog:  # the datasets on disk the teacher trains on, by content, and how it trains on them
        base["user_domains"] = {n: build_user(n, spec, cell_px, catalog.cache_dir).name
                                for n, spec in catalog.specs.items()}
        base["user_recipe"] = USER_RECIPE_VERSION

    fe_spec = zoo.frontend.key() | ({"user_stage": zoo.frontend.user_stage() | {"v": USER_STAGE_VERSION}}
                                    if catalog and zoo.frontend.user_steps else {})
    fe_key = stable_hash(base | {"frontend": fe_spec})
    fe_dir = root / f"frontend-{fe_key}"

    def build_fe(tmp: Path) -> dict:
        torch.manual_seed(seed)
        fe = build_frontend(zoo.frontend, cell_px)
        metrics, heads = train_frontend(fe, zoo.frontend, cell_px, seed,
                                        _progress_factory(progress, "stage A front-end"))
        meta = {"role": "frontend", "train": metrics, "params": count_params(fe)}
        if catalog and zoo.frontend.user_steps:
            meta["train_user"] = adapt_frontend(fe, heads, zoo.frontend, tokenizer, catalog, cell_px, seed,
                                                _progress_factory(progress, "stage A+ front-end on user domains"))
        fe.save_pretrained(tmp)
        return meta

    get_or_build(fe_dir, build_fe, "front-end")
    presets = {"teacher": zoo.teacher, **zoo.tiers}
    wanted = [r for r in presets if (roles is None or r in roles) and r not in overridden]
    refit_from = _build_zoo(name, cell_px, seed, cache_dir, set(), progress, workers, set(wanted), NO_DOMAINS)[2] \
        if catalog and wanted else {}

    def key(role):
        refit = {"refit_from": refit_from[role].name, "refit_share": _refit_share(presets[role])} \
            if role in refit_from else {}
        return stable_hash(base | {"frontend": fe_key, "preset": presets[role].key(), "role": role} | refit)

    folders = {role: root / f"{role}-{key(role)}" for role in wanted}
    missing = [(r, presets[r], f, refit_from.get(r)) for r, f in folders.items()
               if workers > 1 and verify(f) is not None]
    if len(missing) > 1:
        _build_parallel(missing, workers, name, fe_dir, cell_px, seed, cache_dir, progress, catalog)
    for role, folder in folders.items():
        get_or_build(folder, lambda tmp, r=role: _train_model(
            tmp, r, presets[r], zoo, fe_dir, cell_px, seed, tokenizer, progress, catalog=catalog,
            refit_from=refit_from.get(r)), role)
    return tokenizer, fe_dir, folders


def zoo_summary(zoo: Zoo) -> list[dict]:
    """One row per model: role, params, precision, stored size (MB) and training time."""
    rows = []
    for role, m in zoo.meta.items():
        rows.append({"model": role, "params": m.get("params"), "precision": m.get("precision", "fp32"),
                     "trained_on": ",".join(m.get("trained_on", [])) or "-",
                     "device_MB": round(m["device_bytes"] / 1e6, 3) if "device_bytes" in m else None,
                     "train_s": round(sum(m.get(k, {}).get("seconds", 0.0) for k in ("train", "train_user")), 1)})
    return rows
