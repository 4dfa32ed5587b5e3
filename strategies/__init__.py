"""Server strategies: one algorithm per file, each naming its device behaviour (``clients/``).

The registry maps a strategy's name to where it lives; a strategy is imported when it is first used,
so names can be checked without importing torch or Flower.
"""

from __future__ import annotations

from importlib import import_module

REGISTRY = {
    "source-only": "strategies.source_only:SourceOnly",
    "tent": "strategies.tent:Tent",
    "fedavg": "strategies.fedavg:FedAvg",
    "fedprox": "strategies.fedprox:FedProx",
    "cloud-kd-full": "strategies.cloud_kd_full:CloudKDFull",
    "cdcca": "strategies.cdcca:CDCCA",
}

# the strategies whose cloud trains the tiers with AKD (``strategies.cdcca.CDCCA`` and its subclasses): their
# cloud starts ``strategy.akd.workers`` worker processes, which the capacity check counts
CLOUD_AKD = ("cloud-kd-full", "cdcca")


def check_name(name: str) -> None:
    """A one-line ``FlSimError`` when no strategy is registered as ``name``."""
    from fl_sim import FlSimError

    if name not in REGISTRY:
        raise FlSimError(f"invalid config: strategy.name: unknown strategy {name!r}; allowed: {', '.join(REGISTRY)}")


def get_strategy(name: str):
    """The strategy class registered as ``name``."""
    check_name(name)
    module, cls = REGISTRY[name].split(":")
    return getattr(import_module(module), cls)
