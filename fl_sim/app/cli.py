"""The ``fl-sim`` command line. User mistakes print one line (``fl-sim: error: ...``), never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from contextlib import contextmanager

from fl_sim import FlSimError, Stopped
from fl_sim.config.overrides import parse_set_overrides
from fl_sim.quiet import quiet_data, quiet_libraries

log = logging.getLogger("fl_sim")



@contextmanager
def _progress(quiet: bool):
    if quiet:
        yield None
        return
    if not sys.stdout.isatty():  # a log file: a line per model every 30 s (rich would draw nothing until the end)
        from fl_sim.app.progress_lines import LineProgress

        yield LineProgress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as p:
        yield p


def default_pretrain_workers() -> int:
    """Processes ``pretrain``/``evaluate`` train missing models in: 2 on a machine with 2 or more cores
    (the teacher beside the device tiers; per-model step times scale poorly with threads on 2 cores)."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def _overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise FlSimError(f"--model expects ROLE=PATH, got {item!r}")
        role, path = item.split("=", 1)
        out[role] = path
    return out


def start_libraries() -> None:
    """Import and quiet the heavy libraries (after every input is validated: errors come in well under 2 s)."""
    quiet_libraries()
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


def _user_domains(args):
    """``--domains FILE``: that experiment's ``[domains]`` as a ``DomainCatalog``, their data converted (and
    checked) now; without it, the built-in world alone."""
    from fl_sim.world.catalog import NO_DOMAINS, DomainCatalog

    if not args.domains:
        return NO_DOMAINS
    from fl_sim.config import load_config

    cfg = load_config(args.domains)
    if not cfg.domains:
        raise FlSimError(f"--domains {args.domains}: the file declares no [domains.NAME]")
    catalog = DomainCatalog(cfg.domains, args.cache_dir)
    quiet_data()
    catalog.build_all()
    return catalog


def cmd_pretrain(args) -> int:
    from fl_sim.app.preflight import check_models

    check_models(args.zoo, _overrides(args.model))
    catalog = _user_domains(args)
    start_libraries()
    from fl_sim.models.zoo import pretrain_zoo, zoo_summary

    t0 = time.time()
    with _progress(args.quiet) as p:
        zoo = pretrain_zoo(args.zoo, seed=args.seed, cache_dir=args.cache_dir, overrides=_overrides(args.model),
                           progress=p, workers=args.workers, catalog=catalog)
    from fl_sim.report.table import print_rows

    print_rows(zoo_summary(zoo), title=f"model zoo '{args.zoo}'")
    print(f"pretrain: {time.time() - t0:.1f} s (models cached under {zoo.paths['frontend'].parent})")
    return 0


def cmd_evaluate(args) -> int:
    from pathlib import Path

    from fl_sim.app.preflight import check_models

    check_models(args.zoo, _overrides(args.model))
    catalog = _user_domains(args)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise FlSimError(f"--json {args.json}: folder {Path(args.json).resolve().parent} does not exist")
    start_libraries()
    from fl_sim.app.zoo_evaluation import check_reference, check_targets, evaluate_zoo, print_eval, reference_table
    from fl_sim.models.zoo import pretrain_zoo

    with _progress(args.quiet) as p:
        zoo = pretrain_zoo(args.zoo, seed=args.seed, cache_dir=args.cache_dir, overrides=_overrides(args.model),
                           progress=p, workers=args.workers, catalog=catalog)
    t0 = time.time()
    table = evaluate_zoo(zoo, n_test=args.n_test, seed=args.seed, cache_dir=args.cache_dir, catalog=catalog)
    reference = reference_table(args.n_test, seed=args.seed, cache_dir=args.cache_dir, catalog=catalog)
    print_eval(table | {"reference": reference} if reference else table)
    checks = check_targets(table, catalog.names()) + check_reference(table, reference)
    for line in checks:
        print(line)
    print(f"evaluate: {time.time() - t0:.1f} s on {args.n_test} test samples per domain")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"table": table, "reference": reference, "targets": checks}, f, indent=1)
    return 0



def cmd_run(args) -> int:
    from fl_sim.app.preflight import check_run
    from fl_sim.app.run import check_same_setup, resume_config, run_dir_for
    from fl_sim.config import load_config

    if args.resume and args.config:
        raise FlSimError("give either a config file or --resume RUN_DIR, not both")
    if not args.resume and not args.config:
        raise FlSimError("give a config file (e.g. experiments/quickstart.toml) or --resume RUN_DIR")
    overrides = parse_set_overrides(args.set)
    if args.ray_address:
        overrides["simulation.ray_address"] = args.ray_address
    cfg = resume_config(args.resume, overrides) if args.resume else load_config(args.config, overrides)
    check_run(cfg)
    if not args.resume:  # a run directory that holds another experiment, before any model is loaded
        check_same_setup(run_dir_for(cfg), cfg, "delete it, resume it with `fl-sim run --resume`, or give the "
                         "run another name (--set name=...)")
    if cfg.domains:  # the user's data, read and checked before torch is imported (the run reuses it)
        from fl_sim.world.catalog import catalog_of

        quiet_data()
        catalog_of(cfg).build_all()
    start_libraries()
    from fl_sim.app.run import run_experiment
    from fl_sim.callbacks.console import ConsoleProgress

    t0 = time.time()
    with _progress(args.quiet) as p:
        run_dir = run_experiment(cfg, run_dir=args.resume, callbacks=[] if args.quiet else [ConsoleProgress()],
                                 progress=p)
    print(f"run finished in {time.time() - t0:.0f} s: results in {run_dir}/results.jsonl")
    print(f"TensorBoard: tensorboard --logdir {run_dir.parent}")
    return 0


def _count(least: int):
    """An argparse type: an integer of at least ``least`` (a one-line usage error otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fl-sim", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--zoo", default="default", help="model zoo preset (default, tiny)")
        p.add_argument("--seed", type=_count(0), default=0)
        p.add_argument("--cache-dir", default=None, help="cache root (default $FL_SIM_CACHE or ~/.cache/fl-sim)")
        p.add_argument("--model", action="append", metavar="ROLE=PATH",
                       help="replace a preset model (teacher or a tier) by a local Hugging Face checkpoint")
        p.add_argument("--domains", metavar="TOML", default=None,
                       help="an experiment file whose [domains] (datasets on disk) the teacher also learns")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--workers", type=_count(1), default=default_pretrain_workers(),
                       help="processes that train missing models side by side (default %(default)s; "
                            "the models are the same for any value)")

    p = sub.add_parser("pretrain", help="train (or load from cache) the teacher and device tiers")
    common(p)
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("evaluate", help="exact-match VQA accuracy per model x domain x family, caption BLEU")
    common(p)
    p.add_argument("--n-test", type=_count(1), default=300, help="test samples per domain")
    p.add_argument("--json", default=None, help="also write the table to this JSON file")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("run", help="run an experiment (TOML) on Flower's simulation engine")
    p.add_argument("config", nargs="?", help="experiment TOML file")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. rounds=5")
    p.add_argument("--ray-address", default=None, help="run on an existing Ray cluster (HOST:PORT or auto)")
    p.add_argument("--quiet", action="store_true", help="no per-round lines or progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="run a grid of strategies x seeds on one fleet and write report.md")
    p.add_argument("config", help="comparison TOML file (e.g. experiments/compare.toml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of every run, e.g. rounds=4")
    p.add_argument("--ray-address", default=None, help="run every run on an existing Ray cluster (HOST:PORT or auto)")
    p.add_argument("--quiet", action="store_true", help="no per-round lines or progress bars")
    p.set_defaults(func=cmd_compare)
    return ap


def cmd_compare(args) -> int:
    from fl_sim.app.compare import load_compare
    from fl_sim.app.preflight import check_run

    overrides = parse_set_overrides(args.set)
    if args.ray_address:
        overrides["simulation.ray_address"] = args.ray_address
    cmp, grid = load_compare(args.config, overrides)
    for v, seed, cfg in grid:
        if cmp.paired and v.label != cmp.paired:  # replays a run of this comparison that may not exist yet
            cfg = cfg.model_copy(update={"fleet": cfg.fleet.model_copy(update={"replay": None})})
        try:
            check_run(cfg)
        except FlSimError as exc:
            raise FlSimError(f"run {v.label!r} seed {seed}: {exc}") from None
    start_libraries()
    from fl_sim.app.compare import run_compare
    from fl_sim.callbacks.console import round_line

    def on_run(i, n, label, seed, state):
        if not args.quiet:
            print(f"[{i + 1}/{n}] {label} seed {seed}: {'already complete' if state == 'done' else 'running'}",
                  flush=True)

    t0 = time.time()
    with _progress(args.quiet) as p:
        out = run_compare(args.config, overrides, on_run=on_run,
                          on_round=None if args.quiet else (lambda rec: print(round_line(rec), flush=True)),
                          progress=p)
    print(f"comparison finished in {time.time() - t0:.0f} s: report in {out}/report.md")
    print(f"TensorBoard: tensorboard --logdir {out}")
    return 0


def _terminate(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    previous = signal.signal(signal.SIGTERM, _terminate)  # `timeout` and schedulers stop a run like Ctrl-C
    try:
        return args.func(args)
    except Stopped as exc:
        print(f"fl-sim: {exc}", file=sys.stderr)
        return exc.exit_code
    except FlSimError as exc:
        print(f"fl-sim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"fl-sim: stopped ({exc.args[0] if exc.args else 'Ctrl-C'})", file=sys.stderr)
        return 143 if exc.args == ("SIGTERM",) else 130
    except SystemExit as exc:  # Ray's own SIGTERM handler, while Ray runs outside a simulation
        if exc.code != signal.SIGTERM:
            raise
        print("fl-sim: stopped (SIGTERM)", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    """The ``fl-sim`` console script. After a stopped run (Ctrl-C, SIGTERM) Ray and Flower threads may still
    be winding down and abort the interpreter's exit: the checkpoint is on disk and Ray is shut down, so
    the process leaves at once."""
    rc = main()
    if rc in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
