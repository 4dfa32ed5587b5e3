"""When a round ends and who made it: the straggler cut on simulated device times. Pure functions.

A device's round time comes from its profile (``DeviceProfile.compute_s`` + ``comm_s``, FedScale's
cost model). The round ends when the ``clients_per_round`` fastest devices are in; devices past the
deadline, or beyond the ``clients_per_round`` fastest, are stragglers and their work is dropped. If
fewer than that many make the deadline, the server waits the deadline out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cut:
    kept: list[int]       # device ids whose work counts, fastest first
    on_time: int          # devices that finished within the deadline
    round_s: float        # virtual seconds the round's device phase lasts


def straggler_cut(times_s: dict[int, float], clients_per_round: int, deadline_s: float, n_sampled: int,
                  replay_kept: list[int] | None = None) -> Cut:
    """Cut the finished devices (``device id -> simulated seconds``) at the deadline and the K fastest.

    ``replay_kept``: a replayed run's participants; those that finished are kept whatever their times.
    """
    order = sorted(times_s, key=lambda d: (times_s[d], d))
    on_time = [d for d in order if times_s[d] <= deadline_s]
    kept = on_time[:clients_per_round]
    if replay_kept is not None:
        want = set(replay_kept)
        kept = [d for d in order if d in want]
    target = min(clients_per_round, n_sampled)
    round_s = max(times_s[d] for d in kept) if kept and len(kept) >= target else deadline_s
    return Cut(kept=kept, on_time=len(on_time), round_s=round_s)
