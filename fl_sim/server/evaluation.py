"""Server-side evaluation: a model zoo on every domain's test split (with the world's targets), and a
fleet's tier models during a run (each tier's adapters per domain, tier-share-weighted means)."""

from __future__ import annotations

import numpy as np

from fl_sim.device import model_cache
from fl_sim.models.evaluate import evaluate
from fl_sim.world.data import load_split
from fl_sim.world.domains import COMBINED, DOMAINS, SHIFTED, USER_DOMAINS, VQA_FAMILIES

TEACHER_MIN = 0.85        # teacher exact match on every domain
DEVICE_SOURCE_MIN = 0.70  # every device tier on the source domain
MIN_GAP = 0.15            # teacher minus device, on every shifted domain


def test_sets(n_test: int, seed: int = 0, cell_px: int = 16, cache_dir: str | None = None) -> dict:
    """Every built-in domain, every combination in ``COMBINED`` and every registered user domain."""
    return {d: load_split(d, "test", n_test, seed, cell_px, cache_dir) for d in [*DOMAINS, *COMBINED, *USER_DOMAINS]}


def evaluate_zoo(zoo, n_test: int = 300, seed: int = 0, cell_px: int = 16, cache_dir: str | None = None) -> dict:
    """``{model: {domain: {family: acc, "vqa": acc, "bleu": bleu}}}`` over every model of ``zoo``."""
    sets = test_sets(n_test, seed, cell_px, cache_dir)
    return {name: evaluate(m, zoo.prompter, sets) for name, m in zoo.models.items()}


def print_eval(table: dict) -> None:
    from fl_sim.report.table import print_rows

    rows = []
    exact = any("vqa_exact" in r for by_domain in table.values() for r in by_domain.values())
    for model, by_domain in table.items():
        for domain, r in by_domain.items():
            row = {"model": model, "domain": domain}
            row |= {f: (100 * r[f] if f in r else None) for f in VQA_FAMILIES}
            row |= {"VQA": 100 * r.get("vqa", 0.0)}
            if exact:  # user domains: VQA on normalised answers, raw exact match beside it
                row["exact"] = 100 * r["vqa_exact"] if "vqa_exact" in r else None
            row["BLEU"] = r.get("bleu")
            rows.append(row)
    print_rows(rows, title="exact-match VQA accuracy (%) per model x domain x family; caption BLEU-4")


def check_targets(table: dict) -> list[str]:
    """Human-readable lines, one per target, each saying MET or MISSED with the measured figure."""
    lines = []
    t = table["teacher"]
    for what, names in (("every domain", DOMAINS), ("every combination of shifts", COMBINED),
                        ("every user domain (normalised answers)", list(USER_DOMAINS))):
        if not any(d in t for d in names):
            continue
        worst = min((d for d in names if d in t), key=lambda d: t[d]["vqa"])
        ok = t[worst]["vqa"] >= TEACHER_MIN
        lines.append(f"[{'MET' if ok else 'MISSED'}] teacher >= {TEACHER_MIN:.0%} on {what} "
                     f"(lowest: {worst} {t[worst]['vqa']:.1%})")
    for tier, by_domain in table.items():
        if tier == "teacher":
            continue
        src = by_domain["source"]["vqa"]
        lines.append(f"[{'MET' if src >= DEVICE_SOURCE_MIN else 'MISSED'}] {tier} >= {DEVICE_SOURCE_MIN:.0%} "
                     f"on source ({src:.1%})")
        gaps = {d: t[d]["vqa"] - by_domain[d]["vqa"] for d in [*SHIFTED, *COMBINED, *USER_DOMAINS] if d in by_domain}
        low = min(gaps, key=gaps.get)
        lines.append(f"[{'MET' if gaps[low] >= MIN_GAP else 'MISSED'}] {tier} >= {MIN_GAP * 100:.0f} points below "
                     f"the teacher on every shifted domain and combination (smallest gap: {low} "
                     f"{gaps[low] * 100:.1f})")
    return lines


# ---------------------------------------------------------------- a fleet's tiers during a run
def eval_domains(fleet) -> list[str]:
    """The domains a run evaluates: the four built-in ones and the run's domains backed by datasets on disk,
    then every other domain a device of ``fleet`` (its profiles) meets, in the order first met."""
    met = dict.fromkeys([*DOMAINS, *USER_DOMAINS])
    for p in fleet:
        met.update(dict.fromkeys(p.domains()))
    return list(met)


def eval_sets(cfg, domains=DOMAINS) -> dict:
    """The run's server-side test sets: ``eval.n_test`` samples of each of ``domains``, drawn with the run seed."""
    return {d: model_cache.split(d, "test", cfg.eval.n_test, cfg.seed, cfg.cache_dir) for d in domains}


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
        pr = model_cache.prompter_for(model_paths[tier], cfg.cache_dir)
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
            t = evaluate(model_cache.base_model(path), model_cache.prompter_for(path, self.cfg.cache_dir),
                         eval_sets(self.cfg, self.domains))
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
