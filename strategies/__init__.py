"""Server strategies (Flower ServerApp side): one algorithm per file, registered by name."""

from strategies.fedavg import FedAvg
from strategies.fedprox import FedProx
from strategies.source_only import SourceOnly

STRATEGIES = {s.name: s for s in (SourceOnly, FedAvg, FedProx)}
