"""Server-side evaluation, as a callback: each tier's current model (its adapters) on every domain the run
evaluates, tier-share-weighted means, and once per run the teacher and the source-only reference (every
tier's base model)."""

from __future__ import annotations

import time

import numpy as np
import torch

from fl_sim.callbacks import Callback, Report
from fl_sim.cloud.actors import ActorGroup, actors_for
from fl_sim.cloud.eval_job import EvalJob, TestSets
from fl_sim.models import placement
from fl_sim.world.catalog import catalog_of
from fl_sim.world.domains import DOMAINS


def eval_domains(fleet, user_domains: list[str] = ()) -> list[str]:
    """The domains a run evaluates: the four built-in ones and the run's domains backed by datasets on disk
    (``user_domains``), then every other domain a device of ``fleet`` (its profiles) meets, in the order first
    met."""
    met = dict.fromkeys([*DOMAINS, *user_domains])
    for p in fleet:
        met.update(dict.fromkeys(p.domains()))
    return list(met)


def test_sets(cfg, domains=DOMAINS) -> TestSets:
    """The run's server-side test sets: ``eval.n_test`` samples of each of ``domains``, drawn with the run seed."""
    return TestSets(list(domains), cfg.eval.n_test, cfg.seed, cfg.cache_dir, catalog_of(cfg))


def eval_actors(cfg, n_jobs: int) -> ActorGroup:
    """The evaluator's actors (``cloud.eval_actors``, ``cloud.eval_gpus``) beside the cloud process."""
    c = cfg.cloud
    n = actors_for(c.eval_actors, n_jobs, c.eval_gpus, placement.current().type, placement.autocasts())
    return ActorGroup("eval", n, c.options("eval"), local=c.eval_gpus <= 0, precision=cfg.simulation.precision,
                      start_timeout_s=c.start_timeout_s)


class FleetEvaluator:
    """Evaluates a run's tier models, one tier a job, side by side on the evaluator's actors and here; the
    teacher and the source-only reference (every tier's base model: what ``source-only`` measures) are
    evaluated once and kept (``state`` / ``load_state``)."""

    def __init__(self, cfg, model_paths: dict, fleet_tiers: list[str], domains=DOMAINS):
        self.cfg, self.model_paths, self.fleet_tiers, self.domains = cfg, model_paths, fleet_tiers, list(domains)
        self.sets = test_sets(cfg, self.domains)
        self.actors = eval_actors(cfg, len(set(fleet_tiers)))
        self.teacher_acc: dict | None = None
        self.reference_acc: dict | None = None

    def evaluate(self, states: dict) -> dict:
        """``{"acc": domain -> tier-share-weighted accuracy (and "overall"), "acc_tier": tier -> domain -> acc}``
        of each tier's model with adapter state ``states[tier]`` (``None`` = the initial adapters, i.e. the
        base model), the tier shares counted over the fleet's tiers; with the teacher's accuracy on the
        first call."""
        jobs = [EvalJob(self.model_paths[t], self.sets, self.cfg.strategy.adapters(), s) for t, s in states.items()]
        if self.teacher_acc is None:
            jobs.append(EvalJob(self.model_paths["teacher"], self.sets))
        threads = 1 if self.actors.n and len(jobs) > 1 else torch.get_num_threads()  # side by side: 1 each
        for job in jobs:
            job.threads = threads
        accs = self.actors.run(jobs)
        if self.teacher_acc is None:
            self.teacher_acc = accs.pop()
        per_tier = dict(zip(states, accs))
        share = {t: self.fleet_tiers.count(t) / len(self.fleet_tiers) for t in states}
        by_domain = {d: sum(share[t] * per_tier[t][d] for t in states) for d in self.domains}
        return {"acc": by_domain | {"overall": float(np.mean(list(by_domain.values())))}, "acc_tier": per_tier}

    def __call__(self, states: dict) -> dict:
        """``acc``, ``acc_tier`` of ``states`` (tier -> adapter state or ``None``), plus ``teacher_acc``
        and ``source_only_acc``."""
        base = all(s is None for s in states.values())
        if self.reference_acc is None and not base:
            self.reference_acc = self.evaluate(dict.fromkeys(states))["acc"]
        out = self.evaluate(states)
        if base:
            self.reference_acc = dict(out["acc"])
        return out | {"teacher_acc": dict(self.teacher_acc), "source_only_acc": dict(self.reference_acc)}

    def state(self) -> dict:
        return {"teacher_acc": self.teacher_acc, "source_only_acc": self.reference_acc}

    def load_state(self, state: dict) -> None:
        self.teacher_acc, self.reference_acc = state.get("teacher_acc"), state.get("source_only_acc")


class CentralEvaluation(Callback):
    """Every ``eval.every`` rounds and in the last: ``acc``, ``acc_tier``, ``teacher_acc``, ``source_only_acc``
    of the tiers' models as devices hold them now (``strategy.device_weights``)."""

    def __init__(self, cfg, model_paths: dict, fleet):
        self.cfg = cfg
        domains = eval_domains(fleet, list(cfg.domains))
        self.evaluator = FleetEvaluator(cfg, model_paths, [p.tier for p in fleet], domains)

    def after_round(self, strategy, record) -> Report | None:
        r = record.round
        if r % self.cfg.eval.every != 0 and r != self.cfg.rounds:
            return Report(wall_s={"evaluate": 0.0})
        t0 = time.time()
        figures = self.evaluator({tier: strategy.device_weights(tier) for tier in strategy.tiers})
        if self.evaluator.actors.nodes:
            figures["eval_actor_nodes"] = list(self.evaluator.actors.nodes)  # where its actors run (Ray node ids)
        return Report(figures, wall_s={"evaluate": time.time() - t0})

    def on_run_begin(self, strategy, first_round: int) -> None:
        self.evaluator.actors.start()

    def on_run_end(self, strategy, completed: bool) -> None:
        self.evaluator.actors.close()

    def state(self) -> dict:
        return self.evaluator.state()

    def load_state(self, state: dict) -> None:
        self.evaluator.load_state(state)
