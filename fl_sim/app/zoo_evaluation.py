"""``fl-sim evaluate``: a model zoo on every domain's test split, and the world's targets for it."""

from __future__ import annotations

from fl_sim.models.evaluate import evaluate
from fl_sim.world.catalog import NO_DOMAINS
from fl_sim.world.data import load_split
from fl_sim.world.domains import COMBINED, DOMAINS, SHIFTED, VQA_FAMILIES

TEACHER_MIN = 0.85        # teacher exact match on every domain
DEVICE_SOURCE_MIN = 0.70  # every device tier on the source domain
MIN_GAP = 0.15            # teacher minus device, on every shifted domain


def test_sets(n_test: int, seed: int = 0, cell_px: int = 16, cache_dir: str | None = None,
              catalog=NO_DOMAINS) -> dict:
    """Every built-in domain, every combination in ``COMBINED`` and every domain of ``catalog``."""
    return {d: load_split(d, "test", n_test, seed, cell_px, cache_dir, catalog)
            for d in [*DOMAINS, *COMBINED, *catalog.names()]}


def evaluate_zoo(zoo, n_test: int = 300, seed: int = 0, cell_px: int = 16, cache_dir: str | None = None,
                 catalog=NO_DOMAINS) -> dict:
    """``{model: {domain: {family: acc, "vqa": acc, "bleu": bleu}}}`` over every model of ``zoo``."""
    sets = test_sets(n_test, seed, cell_px, cache_dir, catalog)
    return {name: evaluate(m, zoo.prompter, sets) for name, m in zoo.models.items()}


def reference_table(n_test: int, seed: int = 0, cell_px: int = 16, cache_dir: str | None = None,
                    catalog=NO_DOMAINS) -> dict:
    """``{domain: {"vqa": acc, "vqa_exact": acc, TYPE: acc, ...}}`` of the supervised reference
    (``fl_sim.models.reference``) on each domain of ``catalog``: trained on its train split, scored on the
    test samples the models are."""
    from fl_sim.models.reference import reference_accuracy

    train_rows = 10**9  # every row (the reference draws at most its own max_rows)
    return {d: reference_accuracy(load_split(d, "train", train_rows, seed, cell_px, cache_dir, catalog),
                                  load_split(d, "test", n_test, seed, cell_px, cache_dir, catalog), seed)
            for d in catalog.names()}


def check_reference(table: dict, reference: dict) -> list[str]:
    """One line per user domain: the teacher against the supervised reference, MET when it is at or above."""
    lines = []
    for d, ref in reference.items():
        t = table["teacher"][d]["vqa"]
        lines.append(f"[{'MET' if t >= ref['vqa'] else 'MISSED'}] teacher >= the supervised reference on {d} "
                     f"(teacher {t:.1%}, reference {ref['vqa']:.1%}: a CNN + bag-of-words answer classifier "
                     "trained on its train split)")
    return lines


TOTALS = ("vqa", "vqa_exact", "bleu")  # a row's keys that are not a family or question type


def print_eval(table: dict) -> None:
    """The models x domains table (built-in families as columns), then, per user domain with two or more
    question types (``question_type``), one table of the models' accuracy on each type."""
    from fl_sim.report.table import print_rows

    rows, user = [], {}
    exact = any("vqa_exact" in r for by_domain in table.values() for r in by_domain.values())
    for model, by_domain in table.items():
        for domain, r in by_domain.items():
            is_user = "vqa_exact" in r
            row = {"model": model, "domain": domain}
            row |= {f: (100 * r[f] if f in r and not is_user else None) for f in VQA_FAMILIES}
            row |= {"VQA": 100 * r.get("vqa", 0.0)}
            if exact:  # user domains: VQA on normalised answers, raw exact match beside it
                row["exact"] = 100 * r["vqa_exact"] if is_user else None
            row["BLEU"] = r.get("bleu")
            rows.append(row)
            if is_user and any(k not in TOTALS for k in r):
                user.setdefault(domain, {})[model] = r
    print_rows(rows, title="exact-match VQA accuracy (%) per model x domain x family; caption BLEU-4")
    for domain, by_model in user.items():
        types = sorted({k for r in by_model.values() for k in r if k not in TOTALS})
        if len(types) < 2:
            continue
        print_rows([{"model": m} | {t: (100 * r[t] if t in r else None) for t in types} | {"all": 100 * r["vqa"]}
                    for m, r in by_model.items()],
                   title=f"{domain}: VQA % by question type")


def check_targets(table: dict, user_domains: list[str] = ()) -> list[str]:
    """Human-readable lines, one per target, each saying MET or MISSED with the measured figure
    (``user_domains``: the names of the domains backed by datasets on disk)."""
    lines = []
    t = table["teacher"]
    for what, names in (("every domain", DOMAINS), ("every combination of shifts", COMBINED),
                        ("every user domain (normalised answers)", list(user_domains))):
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
        gaps = {d: t[d]["vqa"] - by_domain[d]["vqa"] for d in [*SHIFTED, *COMBINED, *user_domains] if d in by_domain}
        low = min(gaps, key=gaps.get)
        lines.append(f"[{'MET' if gaps[low] >= MIN_GAP else 'MISSED'}] {tier} >= {MIN_GAP * 100:.0f} points below "
                     f"the teacher on every shifted domain and combination (smallest gap: {low} "
                     f"{gaps[low] * 100:.1f})")
    return lines
