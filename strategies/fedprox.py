"""fedprox: fedavg with a proximal term ``mu/2 * ||w - w_received||^2`` in each device's local objective.

Device half: ``clients/local_training.py`` with ``proximal_mu = strategy.proximal_mu``.
"""

from strategies.fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"

    def device_settings(self, p, server_round):
        mu = self.strategy_cfg.proximal_mu
        return super().device_settings(p, server_round).model_copy(update={"proximal_mu": mu})
