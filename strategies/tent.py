"""tent: test-time entropy minimisation on the devices (the CD-CCA paper's device-only baseline).

Device half: ``clients/local_training.py`` with the entropy objective: each device minimises the
entropy of its own answer distributions on its unlabelled stream, training its adapters (TENT's
objective; the original trains normalisation affines). It never uses labels, whatever
``strategy.labels`` says. So that the fleet has one model per tier to evaluate, the server averages the
devices' adapters per tier as fedavg does.
"""

from strategies.fedavg import FedAvg


class Tent(FedAvg):
    name = "tent"

    def device_settings(self, p, server_round):
        return super().device_settings(p, server_round).model_copy(update={"objective": "entropy",
                                                                            "labels": "pseudo"})
