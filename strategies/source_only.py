"""source-only: devices never adapt; they run their source-trained base model on the shifting stream.

Device half: ``clients/local_training.py`` with no steps. Devices receive no weights (the message is
the task only) and reply only their metrics.
"""

from strategies.fedavg import FedAvg


class SourceOnly(FedAvg):
    name = "source-only"

    def downlink(self, tier):
        return None

    def device_settings(self, p, server_round):
        return super().device_settings(p, server_round).model_copy(update={"local_steps": 0})
