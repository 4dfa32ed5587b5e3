"""Cross-cutting concerns of the server loop, one small class each, plugged into it (``fl_sim.server.loop``),
after pfl-research's callbacks.

A callback sees the run begin (after a resume: the first round it will run), each round begin, each
round's record once the round is trained and aggregated, and the run end (also when it fails). The loop calls
them in order, and a callback may *report*: ``after_round`` returns figures that join the round's record
(the callbacks after it see them, so server-side evaluation comes before the results logger) and may ask the
loop to stop after this round. A callback with state a resumed run needs returns it from ``state`` (JSON),
and the run's checkpoint carries it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    """What a callback returns from ``after_round``: figures for the round's record, wall seconds for its
    ``wall_s``, and whether to stop."""
    figures: dict = field(default_factory=dict)
    stop: bool = False
    wall_s: dict = field(default_factory=dict)


class Callback:
    def on_run_begin(self, strategy, first_round: int) -> None:
        """Before the first round this run will execute (``first_round`` > 1 after a resume)."""

    def on_round_begin(self, strategy, server_round: int) -> None:
        """Before round ``server_round`` samples its devices."""

    def after_round(self, strategy, record) -> Report | None:
        """After round ``record.round`` is trained and aggregated (``record``: ``fl_sim.server.round.RoundRecord``,
        with the figures of the callbacks before this one)."""
        return None

    def on_run_end(self, strategy, completed: bool) -> None:
        """When the loop ends; ``completed`` is False when it ended with an error."""

    def state(self) -> dict:
        """What a resumed run needs of this callback (JSON, kept in the run's checkpoint)."""
        return {}

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint's ``state`` (the whole JSON part: take your own keys)."""
