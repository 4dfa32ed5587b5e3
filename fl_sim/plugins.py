"""The registries through which the core reaches its plugins: server strategies (``strategies/``) and the
Flower ClientApp that emulates devices (``clients/``). Each entry names where its code lives, as
``module:attribute``; it is imported on first use, so names are checked without torch or Flower.

Adding a strategy is a file in ``strategies/``, its device half in ``clients/`` (or an existing one), and
one line in ``STRATEGIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import import_module

from fl_sim import FlSimError


@dataclass(frozen=True)
class StrategyEntry:
    target: str  # "module:Class"
    # the nested ``strategy.*`` sections (uts, akd, dwc) its runs read: changing another one does not change
    # them (``fl_sim.app.run.check_same_setup``); ``akd`` means its cloud distils into the tiers
    reads: tuple[str, ...] = ()


STRATEGIES = {
    "source-only": StrategyEntry("strategies.source_only:SourceOnly"),
    "tent": StrategyEntry("strategies.tent:Tent"),
    "fedavg": StrategyEntry("strategies.fedavg:FedAvg"),
    "fedprox": StrategyEntry("strategies.fedprox:FedProx"),
    "cloud-kd-full": StrategyEntry("strategies.cloud_kd_full:CloudKDFull", ("uts", "akd", "dwc")),
    "cdcca": StrategyEntry("strategies.cdcca:CDCCA", ("uts", "akd", "dwc")),
}

CLIENT_APP = "clients.device:app"  # the ClientApp every node runs (as pyproject's [tool.flwr.app.components])


def load(target: str):
    """The object ``module:attribute`` names."""
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


def check_strategy(name: str) -> StrategyEntry:
    """The registry entry of strategy ``name``; a one-line ``FlSimError`` when none is registered."""
    if name not in STRATEGIES:
        raise FlSimError(f"invalid config: strategy.name: unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


@cache
def get_strategy(name: str):
    """The strategy class registered as ``name``."""
    return load(check_strategy(name).target)
