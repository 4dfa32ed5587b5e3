"""One round, typed: what the server planned (``RoundPlan``), what the strategy made of the replies
(``RoundOutcome``), and the record callbacks extend and log (``RoundRecord``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RoundPlan:
    """Who was sampled, what each was sent, and the settings it runs with."""
    sampled: list[int]
    available: int
    messages: list = field(default_factory=list)
    settings: dict[int, object] = field(default_factory=dict)  # device -> its behaviour's typed ``Settings``
    down_bytes: dict[int, int] = field(default_factory=dict)


@dataclass
class Absorbed:
    """What a strategy's ``update`` made of a round: its figures for the record, and the virtual seconds its
    cloud needs after the uploads (they move the simulated clock)."""
    figures: dict = field(default_factory=dict)
    cloud_s: float | None = None  # None: the strategy has no cloud work
    behind_s: float = 0.0  # virtual seconds of an earlier round's cloud work that ran beside this round's devices


@dataclass
class RoundOutcome:
    """What a round produced."""
    participant_ids: list[int]
    stragglers: int
    late: int
    failed: int
    uplink_bytes: int
    downlink_bytes: int
    round_virtual_s: float
    online_acc: float
    loss: float
    absorbed: Absorbed = field(default_factory=Absorbed)


@dataclass
class RoundRecord:
    """A completed round as logged: the loop's fields, the strategy's figures, and whatever callbacks add to
    ``figures`` (evaluation, continual-learning figures). ``as_dict()`` is one line of ``results.jsonl``."""
    round: int
    virtual_time_s: float
    available: int
    sampled_ids: list[int]
    outcome: RoundOutcome
    cum_uplink_bytes: int
    cum_downlink_bytes: int
    wall_s: dict[str, object] = field(default_factory=dict)
    figures: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        o = self.outcome
        out = {"round": self.round, "virtual_time_s": self.virtual_time_s, "available": self.available,
               "sampled": len(self.sampled_ids), "sampled_ids": self.sampled_ids,
               "participant_ids": o.participant_ids, "participants": len(o.participant_ids),
               "stragglers": o.stragglers, "late": o.late, "failed": o.failed, "uplink_bytes": o.uplink_bytes,
               "downlink_bytes": o.downlink_bytes, "round_virtual_s": o.round_virtual_s, "online_acc": o.online_acc,
               "loss": o.loss, "cum_uplink_bytes": self.cum_uplink_bytes,
               "cum_downlink_bytes": self.cum_downlink_bytes, "wall_s": self.wall_s}
        if o.absorbed.cloud_s is not None:
            out["cloud_s"] = o.absorbed.cloud_s
        return out | o.absorbed.figures | self.figures
