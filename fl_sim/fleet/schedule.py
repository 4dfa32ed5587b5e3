"""A device's domain schedule: the stages of data it meets over a run. Pure functions.

A schedule is written ``"source@1, dusk@4, novel+dusk@7~2, source@10"``: each stage is a domain and the
round it starts (the first stage starts in round 1), optionally ``~k``: a gradual transition over ``k``
rounds, in which the previous stage's domain fades out (round ``start + i`` of the transition draws a
share ``(i + 1) / (k + 1)`` of the samples from the new domain). Stages start in strictly increasing
rounds; a transition ends before the next stage starts.

Drawn schedules (``fleet.schedule``) start at ``first``, change domain every ``stage_rounds`` rounds to a
domain drawn by weight (never the current one), and with ``return_to_first`` end back at ``first``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_STAGE = re.compile(r"^\s*([A-Za-z0-9_+-]+)\s*@\s*(\d+)\s*(?:~\s*(\d+))?\s*$")


@dataclass(frozen=True)
class Stage:
    domain: str
    start: int  # the round this stage starts
    ramp: int = 0  # rounds over which the previous stage's domain fades out


def parse(text: str, domains=None) -> tuple[Stage, ...]:
    """The stages of ``text``; ``ValueError`` naming the first problem (``domains``: the allowed names, or a
    function giving why a name is not a domain, ``None`` when it is one)."""
    stages = []
    for part in str(text).split(","):
        m = _STAGE.match(part)
        if not m:
            raise ValueError(f"stage {part.strip()!r} is not DOMAIN@ROUND or DOMAIN@ROUND~RAMP")
        stages.append(Stage(m.group(1), int(m.group(2)), int(m.group(3) or 0)))
    check(tuple(stages), domains)
    return tuple(stages)


def check(stages: tuple[Stage, ...], domains=None, rounds: int | None = None) -> None:
    """``ValueError`` for stages out of order, unknown domains, or a transition too long."""
    if not stages or stages[0].start != 1:
        raise ValueError("the first stage must start in round 1")
    if stages[0].ramp:
        raise ValueError("the first stage has no previous domain to fade from (no ~ramp)")
    for a, b in zip(stages, stages[1:]):
        if b.start <= a.start:
            raise ValueError(f"stages out of order: {b.domain}@{b.start} after {a.domain}@{a.start}")
        if a.start + a.ramp > b.start:
            raise ValueError(f"the transition into {a.domain}@{a.start} (~{a.ramp}) runs into the next stage")
    for s in stages:
        if callable(domains):
            if (why := domains(s.domain)) is not None:
                raise ValueError(why)
        elif domains is not None and s.domain not in domains:
            raise ValueError(f"unknown domain {s.domain!r}; allowed: {', '.join(domains)}")
    if rounds is not None and stages[-1].ramp and stages[-1].start + stages[-1].ramp > rounds + 1:
        raise ValueError(f"the transition into {stages[-1].domain}@{stages[-1].start} (~{stages[-1].ramp}) "
                         f"is longer than the run ({rounds} rounds)")


def format_stages(stages: tuple[Stage, ...]) -> str:
    return ", ".join(f"{s.domain}@{s.start}" + (f"~{s.ramp}" if s.ramp else "") for s in stages)


def mix_at(stages: tuple[Stage, ...], server_round: int) -> list[tuple[str, float]]:
    """``[(domain, share), ...]`` of the samples a device on ``stages`` sees in ``server_round``."""
    i = max(k for k, s in enumerate(stages) if s.start <= server_round) if server_round >= 1 else 0
    s = stages[i]
    step = server_round - s.start
    if i and s.ramp and step < s.ramp:
        share = (step + 1) / (s.ramp + 1)
        return [(stages[i - 1].domain, 1.0 - share), (s.domain, share)]
    return [(s.domain, 1.0)]


def draw(rng: np.random.Generator, first: str, domains: dict[str, float], n_stages: tuple[int, int],
         stage_rounds: tuple[int, int], ramp_rounds: tuple[int, int], return_to_first: bool) -> tuple[Stage, ...]:
    """A schedule drawn from ``rng``: see the module docstring."""
    names = list(domains)
    weights = np.array([domains[d] for d in names], float)
    n = int(rng.integers(n_stages[0], n_stages[1] + 1))
    stages, start, current = [Stage(first, 1)], 1, first
    for k in range(1, n):
        start += int(rng.integers(stage_rounds[0], stage_rounds[1] + 1))
        if return_to_first and k == n - 1:
            nxt = first
        else:
            avoid = {current} | ({first} if return_to_first and k == n - 2 else set())  # no stage repeats its
            w = np.where(np.isin(np.array(names), list(avoid)), 0.0, weights)             # predecessor
            if w.sum() <= 0:
                break
            nxt = str(rng.choice(names, p=w / w.sum()))
        ramp = int(rng.integers(ramp_rounds[0], ramp_rounds[1] + 1))
        stages.append(Stage(nxt, start, ramp))
        current = nxt
    return tuple(stages)
