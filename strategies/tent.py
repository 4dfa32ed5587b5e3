"""tent: test-time entropy minimisation on the devices (the CD-CCA paper's device-only baseline).

Each device minimises the entropy of its own answer distributions on its unlabelled stream, training
its adapters (TENT's objective; the original trains normalisation affines). So that the fleet has one
model per tier to evaluate, the server averages the devices' adapters per tier as fedavg does.
"""

from strategies.base import FleetStrategy


class Tent(FleetStrategy):
    name = "tent"

    def device_settings(self) -> dict:
        # entropy of the device's own answers: never the true ones, whatever strategy.labels says
        return {"local_steps": self.s.local_steps, "proximal_mu": 0.0, "objective": "entropy", "labels": "pseudo"}
