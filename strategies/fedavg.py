"""fedavg: devices fine-tune their adapters on their own stream; the server averages adapters per tier.

Devices have no labels in the real setting, so by default (``strategy.labels = "pseudo"``) they
self-train on their own answers; ``labels = "oracle"`` uses the true answers (an optimistic baseline).
Aggregation is the mean of the kept devices' adapter states weighted by samples trained (equal weights
when every device runs the same local steps), separately per tier (tiers differ in architecture). Inherits the loop and averaging from ``FleetStrategy``.
"""

from strategies.base import FleetStrategy


class FedAvg(FleetStrategy):
    name = "fedavg"
