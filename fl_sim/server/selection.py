"""Which devices take part in a round: availability, over-commitment, replay. Pure functions.

The server draws ``ceil(clients_per_round * over_commit)`` of the devices available at the current
virtual time from the round's own random stream (FedScale's over-commitment: the slowest are cut
later, see ``fl_sim.server.timing``). A replayed run (``fleet.replay``) samples what the recorded run sampled.
"""

from __future__ import annotations

import math

import numpy as np

from fl_sim.fleet.profiles import DeviceProfile


def available(fleet: list[DeviceProfile], clock_s: float) -> list[DeviceProfile]:
    """The devices online at virtual time ``clock_s``."""
    return [p for p in fleet if p.available(clock_s)]


def sample_devices(fleet: list[DeviceProfile], clock_s: float, clients_per_round: int, over_commit: float,
                   seed: int, server_round: int, replayed: list[int] | None = None
                   ) -> tuple[list[DeviceProfile], int]:
    """``(sampled devices in id order, number available)`` for ``server_round``.

    ``replayed``: the device ids a recorded run sampled in this round (taken whether available or not).
    """
    online = available(fleet, clock_s)
    if replayed is not None:
        return [fleet[i] for i in replayed], len(online)
    n = min(len(online), math.ceil(clients_per_round * over_commit))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7, server_round]))
    chosen = sorted(rng.choice(len(online), size=n, replace=False).tolist()) if n else []
    return [online[i] for i in chosen], len(online)
