"""Server-side evaluation, as a callback: each tier's current model (its adapters) on every domain the run
evaluates, tier-share-weighted means, and once per run the teacher and the source-only reference (every
tier's base model)."""

from __future__ import annotations

import time

import numpy as np

from fl_sim.callbacks import Callback, Report
from fl_sim.device import model_cache
from fl_sim.models.evaluate import evaluate
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


def eval_sets(cfg, domains=DOMAINS) -> dict:
    """The run's server-side test sets: ``eval.n_test`` samples of each of ``domains``, drawn with the run seed."""
    catalog = catalog_of(cfg)
    return {d: model_cache.split(d, "test", cfg.eval.n_test, cfg.seed, cfg.cache_dir, catalog) for d in domains}


def evaluate_adapters(cfg, model_paths: dict, states: dict, fleet_tiers: list[str], domains=DOMAINS) -> dict:
    """``{"acc": domain -> tier-share-weighted accuracy (and "overall"), "acc_tier": tier -> domain -> acc}``
    of each tier's model with adapter state ``states[tier]`` (``None`` = the initial adapters, i.e. the
    base model) on ``domains``, the tier shares counted over ``fleet_tiers`` (one entry per device)."""
    from fl_sim.models.adapters import load_adapter_state

    sets = eval_sets(cfg, domains)
    per_tier = {}
    for tier, state in states.items():
        model, init = model_cache.adapted_model(model_paths[tier], *cfg.strategy.adapters())
        load_adapter_state(model, state if state is not None else init)
        pr = model_cache.prompter_for(model_paths[tier], cfg.cache_dir, catalog_of(cfg))
        per_tier[tier] = {d: r.get("vqa", float("nan")) for d, r in evaluate(model, pr, sets).items()}
    share = {t: fleet_tiers.count(t) / len(fleet_tiers) for t in states}
    by_domain = {d: sum(share[t] * per_tier[t][d] for t in states) for d in sets}
    return {"acc": by_domain | {"overall": float(np.mean(list(by_domain.values())))}, "acc_tier": per_tier}


class FleetEvaluator:
    """Evaluates a run's tier models; the teacher and the source-only reference (every tier's base
    model: what ``source-only`` measures) are evaluated once and kept (``state`` / ``load_state``)."""

    def __init__(self, cfg, model_paths: dict, fleet_tiers: list[str], domains=DOMAINS):
        self.cfg, self.model_paths, self.fleet_tiers, self.domains = cfg, model_paths, fleet_tiers, list(domains)
        self.teacher_acc: dict | None = None
        self.reference_acc: dict | None = None

    def __call__(self, states: dict) -> dict:
        """``acc``, ``acc_tier`` of ``states`` (tier -> adapter state or ``None``), plus ``teacher_acc``
        and ``source_only_acc``."""
        if self.teacher_acc is None:
            path = self.model_paths["teacher"]
            pr = model_cache.prompter_for(path, self.cfg.cache_dir, catalog_of(self.cfg))
            t = evaluate(model_cache.base_model(path), pr, eval_sets(self.cfg, self.domains))
            self.teacher_acc = {d: r.get("vqa", float("nan")) for d, r in t.items()}
        base = all(s is None for s in states.values())
        if self.reference_acc is None and not base:
            self.reference_acc = evaluate_adapters(self.cfg, self.model_paths, dict.fromkeys(states),
                                                   self.fleet_tiers, self.domains)["acc"]
        out = evaluate_adapters(self.cfg, self.model_paths, states, self.fleet_tiers, self.domains)
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
        return Report(figures, wall_s={"evaluate": time.time() - t0})

    def state(self) -> dict:
        return self.evaluator.state()

    def load_state(self, state: dict) -> None:
        self.evaluator.load_state(state)
