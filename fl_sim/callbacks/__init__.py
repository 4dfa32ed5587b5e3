"""Cross-cutting concerns of the server loop, one small class each, plugged into ``FleetStrategy.run``.

A callback sees the run begin (after a resume: the first round it will run), each round's record once
it is complete, and the run end (also when it fails). The loop calls them in order, so a record is
logged before its round is checkpointed: a resume re-runs (and truncates) a round that was not saved.
"""

from __future__ import annotations


class Callback:
    def on_run_begin(self, strategy, first_round: int) -> None:
        """Before the first round this run will execute (``first_round`` > 1 after a resume)."""

    def after_round(self, strategy, record: dict) -> None:
        """After round ``record["round"]`` is complete (trained, aggregated, evaluated)."""

    def on_run_end(self, strategy, completed: bool) -> None:
        """When the loop ends; ``completed`` is False when it ended with an error."""
