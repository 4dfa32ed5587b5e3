"""source-only: devices never adapt; they run their source-trained base model on the shifting stream.

Devices receive no weights (downlink is the config only) and upload only their metrics.
"""

from strategies.base import FleetStrategy


class SourceOnly(FleetStrategy):
    name = "source-only"

    def downlink(self, tier):
        return None

    def device_settings(self) -> dict:
        return {"local_steps": 0, "proximal_mu": 0.0}
