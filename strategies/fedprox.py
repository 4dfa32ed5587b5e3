"""fedprox: fedavg with a proximal term mu/2 * ||w - w_global||^2 in each device's local objective."""

from strategies.base import FleetStrategy


class FedProx(FleetStrategy):
    name = "fedprox"

    def device_settings(self) -> dict:
        return {"local_steps": self.s.local_steps, "proximal_mu": self.s.proximal_mu}
