"""Everything a command was given, checked before anything heavy starts (no torch, transformers, Flower
or Ray): the experiment's strategy, its fleet (every row of a trace), what the machine can hold
(``fl_sim.app.capacity``), a replayed run, and checkpoint directories. Each problem is one ``FlSimError``.
"""

from __future__ import annotations

from pathlib import Path

from fl_sim import FlSimError
from fl_sim.app import capacity
from fl_sim.fleet import schedule


def check_run(cfg) -> int:
    """Check the run ``cfg`` (an ``ExperimentConfig``) can start; returns its number of devices."""
    from fl_sim.config import tier_names
    from fl_sim.models.provider import check_model_dirs
    from fl_sim.plugins import check_strategy
    from fl_sim.world.user_data import check_names

    check_strategy(cfg.strategy.name)
    check_names(cfg.domains)  # names only: the data is read (and checked) before pretraining
    check_model_dirs(cfg.models)
    check_adapter_rank(cfg)
    f, s = cfg.fleet, cfg.strategy
    tiers = tier_names(cfg)
    profiles = None
    if f.trace:
        from fl_sim.fleet.profiles import load_trace

        profiles = load_trace(f.trace, tiers, tuple(cfg.domains))
        n = len(profiles)
        for row, p in enumerate(profiles, 1):
            if p.schedule:
                try:
                    schedule.check(schedule.parse(p.schedule), rounds=cfg.rounds)
                except ValueError as exc:
                    raise FlSimError(f"fleet trace {f.trace} row {row} column schedule (device {p.device_id}): "
                                     f"{exc}") from None
        if "num_devices" in f.model_fields_set and n < f.num_devices:
            raise FlSimError(f"fleet trace {f.trace} holds {n} devices, fewer than fleet.num_devices ({f.num_devices})")
        if s.clients_per_round > n:
            raise FlSimError(f"strategy.clients_per_round ({s.clients_per_round}) is larger than the {n} devices "
                             f"of fleet trace {f.trace}")
    else:
        n = f.num_devices
    if cfg.simulation.ray_address:
        check_ray_address(cfg.simulation.ray_address)
    capacity.check(cfg, n, cloud_workers(cfg, len(tiers)))
    if f.replay:
        from fl_sim.fleet.profiles import load_participation, make_fleet

        fleet = profiles if profiles is not None else make_fleet(f, tiers, cfg.seed, tuple(cfg.domains))
        load_participation(f.replay, cfg.rounds, fleet, s.clients_per_round)
    return n


def cloud_workers(cfg, n_tiers: int) -> int:
    """The Ray actor processes a run's cloud starts, from its settings alone (a ``device = "auto"`` server
    counts as a CPU): the evaluator's (every strategy), and the teacher's and the tiers' AKD actors of the
    strategies that train tiers with AKD (they read ``strategy.akd``); groups that ask for the same
    resources share processes (``fl_sim.cloud.actors``)."""
    import json

    from fl_sim.cloud.actors import actors_for, teacher_actors, workers_for
    from fl_sim.plugins import check_strategy

    sim, c = cfg.simulation, cfg.cloud
    device, bf16 = "cuda" if sim.device.startswith("cuda") else "cpu", sim.precision == "bf16"
    groups = {"eval": actors_for(c.eval_actors, n_tiers, c.eval_gpus, device, bf16)}
    if "akd" in check_strategy(cfg.strategy.name).reads:
        akd = workers_for(cfg.strategy.akd, c, n_tiers, device, bf16)
        if cfg.strategy.cloud_lag and akd and cfg.strategy.akd.workers == "auto" and c.akd_gpus <= 0:
            akd = n_tiers  # a lagging cloud trains every tier on an actor
        groups |= {"akd": akd, "teacher": teacher_actors(c, device, bf16)}
    shared: dict[str, int] = {}
    for kind, n in groups.items():
        key = json.dumps(c.options(kind), sort_keys=True)
        shared[key] = max(shared.get(key, 0), n)
    return sum(shared.values())


def check_models(zoo_name: str, overrides: dict[str, str]) -> None:
    """``--model ROLE=PATH``: known roles of the zoo, and directories that hold a Hugging Face config."""
    from fl_sim.models.presets import get_zoo

    zoo = get_zoo(zoo_name)
    roles = ["teacher", *zoo.tiers]
    for role, path in overrides.items():
        if role not in roles:
            raise FlSimError(f"--model {role}={path}: unknown role {role!r}; allowed: {', '.join(roles)}")
        p = Path(path).expanduser()
        if not p.is_dir():
            raise FlSimError(f"--model {role}={path}: {p.resolve()} is not a directory")
        if not (p / "config.json").is_file():
            raise FlSimError(f"--model {role}={path}: {p.resolve()} is not a checkpoint (no config.json)")


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """``simulation.ray_address``: ``auto`` (Ray finds the cluster this machine joined) or ``HOST:PORT`` of a
    head node's GCS that answers a TCP connection within ``timeout_s``."""
    import socket

    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FlSimError(f"simulation.ray_address {address!r}: expected HOST:PORT (the head node's, e.g. "
                         "10.0.0.1:6379) or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise FlSimError(f"simulation.ray_address {address}: no Ray cluster answers there "
                         f"({exc.strerror or type(exc).__name__}); start one with `ray start --head --port "
                         f"{port}`") from None

def check_loadable(paths: dict[str, str], cache_dir: str | None, catalog=None) -> None:
    """Each model of ``paths`` (role -> directory) can read what feeds it: with its own processor (a
    tokenizer in its directory, ``fl_sim.models.prompts``), that processor loads and agrees with the model;
    without one, it fits the shared word tokenizer's vocabulary and the built-in world's images (``GRID x
    GRID`` cells, one visual token each). ``catalog``: the run's user domains (the shared tokenizer's words)."""
    from fl_sim.device import model_cache
    from fl_sim.models.prompts import has_own_processor
    from fl_sim.models.provider import check_checkpoint
    from fl_sim.world.catalog import NO_DOMAINS
    from fl_sim.world.scenes import GRID
    from fl_sim.world.tokenizer import load_tokenizer

    vocab = None
    for role, path in paths.items():
        cfg = check_checkpoint(role, path)
        if has_own_processor(path):
            try:
                model_cache.prompter_for(path, cache_dir, catalog or NO_DOMAINS)
            except FlSimError as exc:
                raise FlSimError(f"models.{role} = {path!r}: {str(exc).removeprefix(f'{path}: ')}") from None
            continue
        vocab = vocab or len(load_tokenizer(cache_dir, catalog=catalog))
        v = (cfg.get("text_config") or {}).get("vocab_size")
        if v != vocab:
            raise FlSimError(f"models.{role} = {path!r}: vocabulary of {v} tokens, but the directory has no tokenizer "
                             f"of its own and the shared word tokenizer has {vocab}; save the checkpoint's "
                             "processor (tokenizer, image processor, chat template) beside it")
        vc = cfg.get("vision_config") or {}
        size, patch = vc.get("image_size"), vc.get("patch_size")
        if not size or not patch or (size // patch) != GRID or cfg.get("vision_feature_select_strategy") != "full":
            raise FlSimError(f"models.{role} = {path!r}: without a processor of its own, its vision tower must take "
                             f"the built-in world's images as {GRID} x {GRID} visual tokens ('full'); it makes "
                             f"{size}/{patch} patches per side ({cfg.get('vision_feature_select_strategy')!r})")


def check_answer_room(teacher: str, max_new_tokens: int, cache_dir: str | None, catalog=None) -> None:
    """The teacher's answers (``strategy.akd.max_new_tokens``) fit its positions after a short question."""
    from fl_sim.device import model_cache
    from fl_sim.world.catalog import NO_DOMAINS

    pr = model_cache.prompter_for(teacher, cache_dir, catalog or NO_DOMAINS)
    room = pr.max_len - len(pr.prompt("how many shapes are there?")) - 1
    if max_new_tokens > room:
        raise FlSimError(f"strategy.akd.max_new_tokens = {max_new_tokens}: the teacher ({teacher}) has {pr.max_len} "
                         f"positions and a question takes {pr.max_len - room - 1} with its image, leaving {room} for "
                         "an answer and its end; lower it")


def check_adapter_rank(cfg) -> None:
    """``strategy.lora_r`` is at most the width of every tier's language model (a LoRA rank above it adds
    values and no expressiveness); the widths come from the zoo's presets or the checkpoints' configs."""
    widths = {name: shape[0] for name, shape in capacity.tier_shapes(cfg).items()}
    if widths:
        name = min(widths, key=widths.get)
        if cfg.strategy.lora_r > widths[name]:
            raise FlSimError(f"strategy.lora_r = {cfg.strategy.lora_r}: larger than the width of tier {name}'s "
                             f"language model ({widths[name]}); a LoRA rank is at most that width")
