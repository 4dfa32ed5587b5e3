"""fedavg: devices fine-tune their adapters on their own stream; the server averages adapters per tier.

Devices have no labels in the real setting, so by default (``strategy.labels = "pseudo"``) they
self-train on their own answers; ``labels = "oracle"`` uses the true answers (an optimistic baseline).
Aggregation is the sample-weighted mean of the kept devices' adapter states, separately per tier
(tiers have different architectures). Inherits the loop and averaging from ``FleetStrategy``.
"""

from strategies.base import FleetStrategy


class FedAvg(FleetStrategy):
    name = "fedavg"
