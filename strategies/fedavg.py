"""fedavg: devices fine-tune their adapters on their own stream; the server averages adapters per tier.

Device half: ``clients/local_training.py`` with CE. Devices have no labels in the real setting, so by
default (``strategy.labels = "pseudo"``) they self-train on their own answers; ``labels = "oracle"``
uses the true answers (an optimistic baseline). Each device receives its tier's adapter state, runs
``local_steps`` steps and replies its new adapters. Aggregation is the mean of the kept devices'
adapter states weighted by samples trained, separately per tier (tiers differ in architecture).
"""

from clients.local_training import LocalTraining, LocalTrainingSettings
from fl_sim.server.strategy import FleetStrategy


class FedAvg(FleetStrategy):
    name = "fedavg"
    device = LocalTraining

    def device_settings(self, p, server_round) -> LocalTrainingSettings:
        s = self.strategy_cfg
        return LocalTrainingSettings(local_steps=s.local_steps, batch_size=s.batch_size, lr=s.lr, labels=s.labels,
                                     objective="ce", proximal_mu=0.0)
