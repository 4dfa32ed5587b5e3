"""The cloud's replay buffer: a bounded, seeded, checkpointable sample of every AKD target it has seen, so a
tier keeps training on earlier domains' uploads (pure tensors, no Flower)."""

from __future__ import annotations

import numpy as np
import torch

from fl_sim.mechanisms.akd import concat, size, take


class ReplayBuffer:
    """A bounded uniform sample (reservoir sampling) of every target ever added; seeded, checkpointable."""

    def __init__(self, capacity: int, seed: int):
        self.capacity, self.seed = capacity, seed
        self.data: dict[str, torch.Tensor] = {}
        self.seen = 0

    def __len__(self) -> int:
        return size(self.data)

    def add(self, targets: dict[str, torch.Tensor]) -> None:
        if self.capacity <= 0 or not size(targets):
            return
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 11, self.seen]))
        room = self.capacity - len(self)
        head = take(targets, range(min(room, size(targets))))
        self.data = concat([self.data, head])
        for i in range(size(head), size(targets)):
            j = int(rng.integers(self.seen + i + 1))
            if j < self.capacity:
                for k in self.data:
                    self.data[k][j] = targets[k][i]
        self.seen += size(targets)

    def sample(self, k: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        idx = self.sample_indices(k, rng)
        return take(self.data, idx) if idx is not None else {}

    def sample_indices(self, k: int, rng: np.random.Generator) -> np.ndarray | None:
        """The rows ``sample`` takes (``None`` when empty): ``k`` of them, distinct, or all there are."""
        n = len(self)
        return rng.choice(n, size=min(k, n), replace=False) if n else None

    def state(self) -> dict[str, torch.Tensor]:
        return dict(self.data) | {"seen": torch.tensor([self.seen])}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.seen = int(tensors.get("seen", torch.tensor([0]))[0])
        self.data = {k: v for k, v in tensors.items() if k != "seen"}
        if self.data and "distil" not in self.data:  # checkpoints written before per-sample weights
            self.data["distil"] = torch.ones(len(self.data["input_ids"]))
