"""Run one experiment on Flower's simulation engine (Ray backend).

``run_experiment`` resolves the world (zoo, fleet), creates ``runs/<name>/<strategy>-<seed>/``, and
runs a ``ServerApp`` whose main loop is the strategy's, against ``clients.device:app`` on
``num_devices`` virtual nodes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import tomllib
import traceback
from pathlib import Path

from fl_sim import FlSimError, Stopped
from fl_sim.config import ExperimentConfig, load_run_config, to_toml, with_legacy_values
from fl_sim.fleet.profiles import load_participation, make_fleet, save_trace

log = logging.getLogger(__name__)

# Fail fast instead of retrying for minutes when Ray cannot be reached (measured: 8 s instead of ~12 min).
RAY_FAIL_FAST = {"RAY_NUM_REDIS_GET_RETRIES": "1", "RAY_py_gcs_connect_timeout_s": "5",
                 "RAY_gcs_rpc_server_connect_timeout_s": "2"}


def run_dir_for(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name / f"{cfg.strategy.name}-{cfg.seed}"


def backend_config(cfg: ExperimentConfig) -> dict:
    from fl_sim.models.placement import gpu_count

    sim = cfg.simulation
    init = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    if sim.ray_address:
        init["address"] = sim.ray_address
    else:
        init["num_cpus"] = sim.num_cpus or os.cpu_count() or 1
        init["num_gpus"] = gpu_count(sim, cfg.cloud.gpus())  # none unless clients or cloud actors take shares
        if cfg.cloud.resource:  # the one node holds the cloud
            init["resources"] = {cfg.cloud.resource: 1}
    return {"client_resources": {"num_cpus": sim.num_cpus_per_client, "num_gpus": float(sim.num_gpus_per_client)},
            "init_args": init}


def prepare_run(cfg: ExperimentConfig, run_dir: Path | None = None, on_round=None, progress=None,
                callbacks: list | None = None):
    """Everything a run needs before Flower starts: the checks, the zoo (pretrained or cached), the fleet,
    the run directory with its config, fleet and device environment, and the strategy. Returns the
    strategy, whose ``run(grid)`` is the ServerApp's main loop (``run_experiment``, ``fl_sim.app.flower_app``)."""
    from fl_sim.app.preflight import check_run

    run_dir = Path(run_dir or run_dir_for(cfg))
    if cfg.fleet.replay and Path(cfg.fleet.replay).resolve() in (run_dir.resolve(),
                                                                 (run_dir / "results.jsonl").resolve()):
        raise FlSimError(f"fleet.replay names this run's own directory {run_dir}; give the run another name "
                         "(--set name=...)")
    check_run(cfg)  # everything the run was given, before a model is loaded or Ray starts
    from fl_sim.world.catalog import catalog_of

    catalog = catalog_of(cfg)
    catalog.build_all()  # the user domains' data, read and checked before torch is imported
    from fl_sim.models import placement

    placement.check(cfg.simulation, cfg.cloud)
    placement.use(cfg.simulation.device, cfg.simulation.precision)  # the server's models and passes
    from fl_sim.app.preflight import check_loadable
    from fl_sim.callbacks.checkpointing import Checkpointing
    from fl_sim.callbacks.continual import ContinualFigures
    from fl_sim.callbacks.evaluation import CentralEvaluation
    from fl_sim.callbacks.hook import OnRound
    from fl_sim.callbacks.results import ResultsLogger
    from fl_sim.callbacks.stopwatch import Stopwatch
    from fl_sim.config import tier_names
    from fl_sim.device.environment import device_environment
    from fl_sim.models.provider import record as record_models
    from fl_sim.models.provider import resolve_models
    from fl_sim.models.zoo import pretrain_zoo
    from fl_sim.plugins import get_strategy
    from fl_sim.server.strategy import RunContext

    strategy_cls = get_strategy(cfg.strategy.name)
    m = cfg.models
    given = {"teacher": m.teacher} if m.teacher else {}  # the directories named as they are, before the zoo
    given |= {f"tiers.{n}": spec for n, spec in m.tiers.items() if isinstance(spec, str)}
    check_loadable({role: str(Path(p).expanduser().resolve()) for role, p in given.items()}, cfg.cache_dir, catalog)
    zoo_paths = None
    if not (m.teacher and m.tiers):  # the zoo supplies what [models] does not name
        zoo = pretrain_zoo(cfg.zoo, seed=cfg.zoo_seed, cache_dir=cfg.cache_dir, progress=progress,
                           overrides={"teacher": m.teacher} if m.teacher else None,
                           roles={"teacher"} if m.tiers else None, catalog=catalog)
        zoo_paths = zoo.paths
    model_paths = resolve_models(cfg, zoo_paths)
    check_loadable({r if r == "teacher" else f"tiers.{r}": p for r, p in model_paths.items()}, cfg.cache_dir, catalog)
    from fl_sim.plugins import check_strategy

    if "akd" in check_strategy(cfg.strategy.name).reads:
        from fl_sim.app.preflight import check_answer_room

        check_answer_room(model_paths["teacher"], cfg.strategy.akd.max_new_tokens, cfg.cache_dir, catalog)
    tiers = tier_names(cfg)
    fleet = make_fleet(cfg.fleet, tiers, cfg.seed, tuple(cfg.domains))
    cfg = strategy_cls.effective_config(cfg)
    replay = None
    if cfg.fleet.replay:
        replay = load_participation(cfg.fleet.replay, cfg.rounds, fleet, cfg.strategy.clients_per_round)
    check_same_setup(run_dir, cfg, "delete it, resume it with `fl-sim run --resume`, or give the run another "
                     "name (--set name=...)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))
    save_trace(fleet, run_dir / "fleet.json")
    record_models(run_dir, model_paths)
    env = device_environment(cfg, run_dir / "fleet.json", len(fleet), {t: model_paths[t] for t in tiers},
                             strategy_cls.store_dir(run_dir))
    # in order: evaluation and its figures, then the round's time, then what logs and keeps the record
    callbacks = [CentralEvaluation(cfg, model_paths, fleet), ContinualFigures(fleet), Stopwatch(),
                 ResultsLogger(run_dir), Checkpointing(run_dir), *(callbacks or [])]
    if on_round is not None:
        callbacks.append(OnRound(on_round))
    ctx = RunContext(cfg=cfg, fleet=fleet, model_paths=model_paths, run_dir=run_dir, replay=replay,
                     env_path=str(env.write(run_dir)), callbacks=callbacks)
    return strategy_cls(ctx)


def quiet_flower() -> None:
    """Flower logs every simulation step at DEBUG; keep the console to our per-round lines."""
    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(logging.DEBUG if os.environ.get("FL_SIM_DEBUG_FLWR") else logging.WARNING)
    if not any(isinstance(f, _RunSimulationDeprecation) for f in flwr_log.filters):
        flwr_log.addFilter(_RunSimulationDeprecation())


def run_experiment(cfg: ExperimentConfig, run_dir: Path | None = None, on_round=None, progress=None,
                   callbacks: list | None = None) -> Path:
    """Run (or continue, if ``run_dir`` holds a checkpoint) ``cfg`` on Flower's simulation engine;
    returns the run directory.

    ``on_round(record)`` is called after each round; ``callbacks`` (``fl_sim.callbacks.Callback``) are
    added to the run's own (results and TensorBoard, checkpoints)."""
    strategy = prepare_run(cfg, run_dir, on_round, progress, callbacks)
    ctx = strategy.ctx
    cfg, run_dir, fleet = ctx.cfg, ctx.run_dir, ctx.fleet
    for k, v in RAY_FAIL_FAST.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fl_sim.server import loop

    errors: list[BaseException] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        try:
            loop.run(strategy, grid)
        except BaseException as exc:  # surfaced to the caller after the simulation ends
            errors.append(exc)
            ctx.abort.set()

    from fl_sim.plugins import CLIENT_APP, load
    from fl_sim.server.nodes import num_nodes

    quiet_flower()
    t0 = time.time()
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None  # ray.init replaces it
    try:
        run_simulation(server_app=server_app, client_app=load(CLIENT_APP), num_supernodes=num_nodes(cfg, len(fleet)),
                       backend_config=backend_config(cfg), verbose_logging=False)
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, or SIGTERM (the CLI's handler, or Ray's: exit 15)
        if isinstance(exc, SystemExit) and exc.code != signal.SIGTERM:
            raise
        ctx.abort.set()
        why = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) and exc.args != ("SIGTERM",) else "SIGTERM"
        _write_error(run_dir, exc, f"stopped by {why} after {time.time() - t0:.0f} s; the last completed round's "
                                   f"checkpoint is kept; continue with: fl-sim run --resume {run_dir}\n")
        raise Stopped(f"stopped by {why}: completed rounds are kept in {run_dir}; continue with "
                      f"`fl-sim run --resume {run_dir}`", 143 if why == "SIGTERM" else 130) from None
    except BaseException as exc:
        ctx.abort.set()
        cause = exc.__cause__ or exc.__context__ or exc
        where = _write_error(run_dir, exc)
        first = str(cause).splitlines()[0] if str(cause) else ""
        raise FlSimError(f"Flower simulation failed ({type(cause).__name__}: {first}) after {time.time() - t0:.0f} s; "
                         f"traceback in {where}; completed rounds are kept in {run_dir}") from None
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
        _shutdown_ray()
    if errors:
        where = _write_error(run_dir, errors[0])
        first = str(errors[0]).splitlines()[0] if str(errors[0]) else ""
        raise FlSimError(f"run failed: {type(errors[0]).__name__}: {first}; traceback in {where}; "
                         f"completed rounds are kept in {run_dir}")
    (run_dir / ERROR_FILE).unlink(missing_ok=True)  # a resumed run that completes leaves no stale failure
    return run_dir


class _RunSimulationDeprecation(logging.Filter):
    """Drops Flower's notice that ``run_simulation`` is deprecated (printed twice a run): fl-sim calls it
    for the user, who has nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("DEPRECATED FEATURE") and "run_simulation" in str(record.args))


ERROR_FILE = "error.txt"


def _write_error(run_dir: Path, exc: BaseException, head: str = "") -> str:
    """Write ``head`` and ``exc``'s full traceback to ``run_dir/error.txt`` (the console gets one line);
    says where."""
    path = run_dir / ERROR_FILE
    try:
        path.write_text(head + "".join(traceback.format_exception(exc)))
    except OSError as err:  # the one-line error must still come out
        return f"nowhere (cannot write {path}: {err.strerror or err})"
    return str(path)


def check_same_setup(run_dir: Path, cfg: ExperimentConfig, hint: str) -> None:
    """Refuse to continue ``run_dir`` if it holds a different experiment than ``cfg``.

    ``rounds``, ``simulation`` and ``eval`` may differ (they change how long and how it runs, not what),
    and so may the nested ``strategy.*`` sections a strategy does not read (its ``fl_sim.plugins.StrategyEntry.reads``).
    A saved config reads as what that run ran with: today's default for options added since, or their
    ``LEGACY_VALUES`` where the default changed.
    """
    saved = Path(run_dir) / "config.toml"
    if not saved.is_file():
        return
    from pydantic import ValidationError

    from fl_sim.plugins import check_strategy, get_strategy

    strategy = get_strategy(cfg.strategy.name)
    reads = check_strategy(cfg.strategy.name).reads

    def what(d: dict) -> dict:
        d = {k: v for k, v in d.items() if k not in ("rounds", "simulation", "eval")}
        if isinstance(d.get("strategy"), dict):  # nested sections count only if the strategy reads them
            d["strategy"] = {k: v for k, v in d["strategy"].items()
                             if not isinstance(v, dict) or k in reads}
        return d

    want = what(strategy.effective_config(cfg).model_dump(mode="json", exclude_none=True))
    try:
        have = with_legacy_values(tomllib.loads(saved.read_text()))
    except (OSError, ValueError) as exc:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        raise FlSimError(f"{run_dir} has an unreadable config.toml ({exc}); {hint}") from None
    try:
        have = ExperimentConfig.of(have).model_dump(mode="json", exclude_none=True)
    except ValidationError:
        pass  # an option it has no longer exists: it differs
    have = what(have)
    if have != want:
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        raise FlSimError(f"{run_dir} holds a different experiment (differs in {', '.join(diff)}); {hint}")


def check_same_models(run_dir: Path, cfg: ExperimentConfig, hint: str, resolved: dict | None = None) -> None:
    """Refuse to reuse ``run_dir`` if the models it recorded (``models.json``) are not the ones ``cfg`` runs
    now: another checkpoint directory (a zoo whose recipe or data changed is another folder) or the same
    directory with other contents. ``resolved`` caches the resolution between calls (a comparison's runs
    share their models)."""
    import json

    rec = Path(run_dir) / "models.json"
    if not rec.is_file():
        return
    from fl_sim.models.provider import content_hash, resolve_models
    from fl_sim.models.zoo import pretrain_zoo
    from fl_sim.world.catalog import catalog_of

    key = (cfg.zoo, cfg.zoo_seed, cfg.cache_dir, cfg.models.model_dump_json(), str(sorted(cfg.domains.items())))
    resolved = {} if resolved is None else resolved
    if key not in resolved:
        catalog = catalog_of(cfg)
        catalog.build_all()
        m = cfg.models
        zoo = None if (m.teacher and m.tiers) else pretrain_zoo(
            cfg.zoo, seed=cfg.zoo_seed, cache_dir=cfg.cache_dir, roles={"teacher"} if m.tiers else None,
            overrides={"teacher": m.teacher} if m.teacher else None, catalog=catalog)
        now = resolve_models(cfg, zoo.paths if zoo else None)
        resolved[key] = {role: (p, content_hash(p)) for role, p in now.items()}
    try:
        before = json.loads(rec.read_text())
    except (OSError, ValueError):
        before = {}
    for role, (path, sha) in resolved[key].items():
        old = before.get(role) or {}
        if old.get("path") != path or old.get("sha256_16") != sha:
            raise FlSimError(f"{run_dir} ran with another {role} model ({old.get('path')}, content hash "
                             f"{old.get('sha256_16')}) than this experiment uses now ({path}, {sha}); {hint}")


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - shutdown is best effort
        pass


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """The saved config of the run in ``run_dir``, for continuing it from its last checkpoint.

    ``overrides`` may change how it runs (``rounds``, ``simulation.*``, ``eval.*``), not what it simulates.
    """
    run_dir = Path(run_dir)
    for key in overrides or {}:
        if key != "rounds" and not key.startswith(("simulation.", "eval.")):
            raise FlSimError(f"cannot change {key!r} when resuming (only rounds, simulation.*, eval.*)")
    if not (run_dir / "config.toml").is_file():
        raise FlSimError(f"not a run directory (no config.toml): {run_dir}")
    return load_run_config(run_dir / "config.toml", overrides)


def resume_experiment(run_dir: str | Path, overrides: dict | None = None, **kw) -> Path:
    """Continue the run in ``run_dir`` from its last checkpoint, with its saved config."""
    return run_experiment(resume_config(run_dir, overrides), run_dir=Path(run_dir), **kw)
