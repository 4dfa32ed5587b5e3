"""Server strategies (Flower ServerApp side): one algorithm per file, registered by name."""

from strategies.cdcca import CDCCA, CloudKDFull
from strategies.fedavg import FedAvg
from strategies.fedprox import FedProx
from strategies.source_only import SourceOnly
from strategies.tent import Tent

STRATEGIES = {s.name: s for s in (SourceOnly, Tent, FedAvg, FedProx, CloudKDFull, CDCCA)}
