"""``fl-sim compare``: a grid of strategies (and ablations) x seeds on the same fleet, then a report.

A comparison file names a base experiment and the variants to run on it::

    name = "compare"
    base = "shift.toml"                  # relative to this file
    seeds = [0, 1]
    paired = "cdcca"                     # optional: the others replay this variant's participation
    [set]                                # overrides for every run (dotted keys)
    rounds = 10
    [[runs]]
    label = "cdcca-random"
    strategy = "cdcca"
    set = { "strategy.uts.method" = "random" }

Runs go to ``<output_dir>/<name>/<label>-<seed>/`` (one TensorBoard logdir for the whole grid:
``tensorboard --logdir <output_dir>/<name>``). A finished run is skipped and an interrupted one resumes
from its checkpoint, so re-running the command after a crash continues where it stopped; a run directory
made with other models than the comparison uses now (a retrained zoo, a changed checkpoint) is refused
before anything runs. Runs are
sequential: each one already spreads its devices over every core through Ray.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fl_sim import FlSimError, Stopped
from fl_sim.callbacks.results_file import flatten, read_results
from fl_sim.config import NAME_PATTERN, ExperimentConfig, explain_error, load_config, read_toml
from fl_sim.report.comparison import RunRef, build_report

log = logging.getLogger(__name__)


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    strategy: str
    set: dict[str, object] = Field(default_factory=dict)


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field("compare", pattern=NAME_PATTERN, description="the comparison's folder under output_dir")
    base: str
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)

    @field_validator("seeds", mode="before")
    @classmethod
    def _int_seeds(cls, v):
        if isinstance(v, list) and any(isinstance(x, bool) for x in v):
            raise ValueError(f"expected integers, got {v!r}")
        return v
    set: dict[str, object] = Field(default_factory=dict)
    baseline: str = "source-only"
    paired: str | None = Field(None, description=(
        "label of a variant whose participation (devices sampled and kept per round) every other variant of "
        "the same seed replays (``fleet.replay``), so differences are the methods', not participation's"))
    runs: list[Variant] = Field(min_length=1)


def load_compare(path: str | Path, overrides: dict | None = None
                 ) -> tuple[CompareConfig, list[tuple[Variant, int, ExperimentConfig]]]:
    """The comparison and its fully validated grid ``[(variant, seed, experiment config)]``."""
    path = Path(path)
    try:
        cmp = CompareConfig.model_validate(read_toml(path, "comparison file"))
    except ValidationError as exc:
        raise FlSimError(f"invalid comparison {path}: {explain_error(exc)}") from None
    labels = [v.label for v in cmp.runs]
    if len(set(labels)) != len(labels):
        raise FlSimError(f"invalid comparison {path}: duplicate run labels")
    if cmp.paired is not None and cmp.paired not in labels:
        raise FlSimError(f"invalid comparison {path}: paired = {cmp.paired!r} is not a run label")
    base = (path.parent / cmp.base).resolve()
    # the paired variant goes first in each seed: the others replay its participation
    runs = sorted(cmp.runs, key=lambda v: v.label != cmp.paired) if cmp.paired else cmp.runs
    grid = []  # seed-major: every variant of the first seed finishes before any second seed starts
    from fl_sim.plugins import check_strategy

    for v in runs:
        try:
            check_strategy(v.strategy)
        except FlSimError as exc:
            raise FlSimError(f"run {v.label!r}: {exc}") from None
    for seed in cmp.seeds:
        for v in runs:
            dotted = {**flatten(cmp.set, sep=".", numbers_only=False), **flatten(v.set, sep=".", numbers_only=False)}
            over = {**dotted, **(overrides or {}), "strategy.name": v.strategy, "seed": seed,
                    "name": cmp.name}
            if cmp.paired and v.label != cmp.paired:
                ref = next(c for w, s, c in grid if w is runs[0] and s == seed)
                over["fleet.replay"] = str(Path(ref.output_dir) / cmp.name / f"{cmp.paired}-{seed}")
            try:
                grid.append((v, seed, load_config(base, over)))
            except FlSimError as exc:
                raise FlSimError(f"run {v.label!r}: {exc}") from None
    return cmp, grid


def is_complete(run_dir: Path, rounds: int) -> bool:
    try:
        res = read_results(run_dir)
    except (OSError, ValueError):
        return False
    return bool(res) and res[-1]["round"] >= rounds


def run_compare(path: str | Path, overrides: dict | None = None, on_run=None, on_round=None, progress=None) -> Path:
    """Run (or continue) the grid in ``path`` and write ``report.md`` (complete runs only); returns its directory."""
    from fl_sim.app.run import check_same_models, check_same_setup, run_experiment

    cmp, grid = load_compare(path, overrides)
    out = Path(grid[0][2].output_dir) / cmp.name
    resolved: dict = {}
    for v, seed, cfg in grid:  # check every existing run directory before spending time on any run
        hint = "delete it or give the comparison another name"
        check_same_setup(out / f"{v.label}-{seed}", cfg, hint)
        check_same_models(out / f"{v.label}-{seed}", cfg, hint, resolved)
    out.mkdir(parents=True, exist_ok=True)
    refs, failures = [], []
    for i, (v, seed, cfg) in enumerate(grid):
        run_dir = out / f"{v.label}-{seed}"
        refs.append(RunRef(v.label, seed, run_dir))
        if is_complete(run_dir, cfg.rounds):
            if on_run:
                on_run(i, len(grid), v.label, seed, "done")
            continue
        if on_run:
            on_run(i, len(grid), v.label, seed, "running")
        try:
            run_experiment(cfg, run_dir=run_dir, on_round=on_round, progress=progress)
        except Stopped:
            raise
        except FlSimError as exc:  # keep going: one broken variant must not cost the others
            failures.append(f"{v.label}-{seed}: {exc}")
            log.error("run %s-%d failed: %s", v.label, seed, exc)
    (out / "compare.json").write_text(json.dumps(
        {"name": cmp.name, "base": cmp.base, "seeds": cmp.seeds, "paired": cmp.paired,
         "runs": [v.model_dump() for v in cmp.runs], "failures": failures}, indent=1))
    done = [r for r, (_, _, cfg) in zip(refs, grid) if is_complete(r.run_dir, cfg.rounds)]
    build_report(done, out, title=f"Strategy comparison: {cmp.name}", baseline=cmp.baseline, paired=cmp.paired)
    if failures:
        raise FlSimError(f"{len(failures)} run(s) failed (report written without them): {failures[0]}")
    return out

