"""Continual-learning figures of a fleet's tier models over a run, from the accuracy history.

For tier ``t``, domain ``d`` and evaluated round ``r``, ``a_r(t, d)`` is the accuracy of the tier's model on
``d``'s test set. ``current(t, r)`` is the set of domains some device of ``t`` sees in round ``r`` (its
schedule), ``seen(t, r)`` every domain current in some round up to ``r``. Per round, each figure is a
mean over a tier's domains, then weighted by the tiers' shares of the fleet (as ``acc`` is):

``acc_seen``    mean of ``a_r(t, d)`` over ``d`` in ``seen(t, r)``: accuracy on everything met so far
``forgetting``  mean over ``d`` in ``seen(t, r)`` of ``max_{r'} a_{r'}(t, d) - a_r(t, d)``, ``r'`` the
                evaluated rounds from ``d``'s first round to ``r``: the drop from the best accuracy to now
                (Chaudhry et al., "Riemannian Walk for Incremental Learning", ECCV 2018)
``bwt``         backward transfer, mean over the domains seen but no longer current of
                ``a_r(t, d) - a_e(t, d)``, ``e`` the last evaluated round in which ``d`` was current: how
                learning later domains changed earlier ones (Lopez-Paz and Ranzato, "Gradient Episodic
                Memory for Continual Learning", NeurIPS 2017, with a domain stage as the task); NaN
                while no domain has been left
"""

from __future__ import annotations

import math

from fl_sim.callbacks import Callback, Report


def continual_metrics(history: dict[int, dict[str, dict[str, float]]], current: dict[str, dict[int, set[str]]],
                      shares: dict[str, float], r: int) -> dict[str, float]:
    """The figures at round ``r``. ``history``: evaluated round -> tier -> domain -> accuracy (``r``
    included); ``current``: tier -> round -> domains current then (every round up to ``r``); ``shares``:
    tier -> share of the fleet."""
    per_tier: dict[str, dict[str, float]] = {}
    rounds = sorted(k for k in history if k <= r)
    for tier, now in history[r].items():
        cur = current.get(tier, {})
        first = {}
        for k in range(1, r + 1):
            for d in sorted(cur.get(k, ())):  # a fixed order: the sums below do not follow string hashing
                first.setdefault(d, k)
        seen = [d for d in first if d in now]
        if not seen:
            continue
        forget, back = [], []
        for d in seen:
            past = [history[k][tier][d] for k in rounds if k >= first[d] and d in history[k].get(tier, {})]
            forget.append(max(past) - now[d])
            if d not in cur.get(r, ()):
                ends = [k for k in rounds if k < r and d in cur.get(k, ()) and d in history[k].get(tier, {})]
                if ends:
                    back.append(now[d] - history[ends[-1]][tier][d])
        per_tier[tier] = {"acc_seen": _mean(now[d] for d in seen), "forgetting": _mean(forget),
                          "bwt": _mean(back)}
    out = {}
    for key in ("acc_seen", "forgetting", "bwt"):
        vals = {t: v[key] for t, v in per_tier.items() if not math.isnan(v[key])}
        total = sum(shares.get(t, 0.0) for t in vals)
        out[key] = sum(shares[t] * v for t, v in vals.items()) / total if total > 0 else float("nan")
    return out


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


class ContinualTracker:
    """Keeps a run's accuracy history and the fleet's current domains; ``update`` gives each evaluated
    round's figures. Its ``state`` goes into the run's checkpoint, so a resumed run continues them."""

    def __init__(self, fleet):
        self.tiers = sorted({p.tier for p in fleet})
        self.shares = {t: sum(p.tier == t for p in fleet) / len(fleet) for t in self.tiers}
        self.fleet = fleet
        self.history: dict[int, dict[str, dict[str, float]]] = {}
        self._current: dict[str, dict[int, set[str]]] = {t: {} for t in self.tiers}

    def _fill(self, r: int) -> None:
        for k in range(1, r + 1):
            if k in self._current[self.tiers[0]]:
                continue
            for t in self.tiers:
                self._current[t][k] = set()
            for p in self.fleet:
                self._current[p.tier][k].update(d for d, _ in p.mix_at(k))

    def update(self, r: int, acc_tier: dict[str, dict[str, float]]) -> dict[str, float]:
        self._fill(r)
        self.history[r] = {t: dict(v) for t, v in acc_tier.items()}
        return continual_metrics(self.history, self._current, self.shares, r)

    def state(self) -> dict:
        return {str(r): v for r, v in self.history.items()}

    def load_state(self, state: dict) -> None:
        self.history = {int(r): v for r, v in (state or {}).items()}


class ContinualFigures(Callback):
    """``acc_seen``, ``forgetting`` and ``bwt`` of each evaluated round (one that has ``acc_tier``)."""

    def __init__(self, fleet):
        self.tracker = ContinualTracker(fleet)

    def after_round(self, strategy, record) -> Report | None:
        if "acc_tier" not in record.figures:
            return None
        return Report(self.tracker.update(record.round, record.figures["acc_tier"]))

    def state(self) -> dict:
        return {"continual": self.tracker.state()}

    def load_state(self, state: dict) -> None:
        self.tracker.load_state(state.get("continual"))
