"""A device behaviour: what one emulated device does in a round, and what it has to work with.

Each behaviour is one module (in ``clients/``), registered under the module's dotted name: a strategy
names the class as its ``device``, its tasks carry that name, and ``clients/device.py`` dispatches to it
(importing the module on first use). A behaviour has

``Settings``   a pydantic model: what the server tells the device each round (``fl_sim.protocol.device_task``)
``run``        ``(DeviceRound, settings, message content) -> reply content``

``DeviceRound`` gives it the device's own world without Flower: its profile, random streams, model with
adapters (cached per worker process and tier) and the samples it sees this round. Nothing here
imports Flower, so behaviours run the same in the ClientApp and in the plain-loop benchmarks.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from fl_sim import FlSimError
from fl_sim.device import model_cache
from fl_sim.device.environment import DeviceEnvironment, profile
from fl_sim.fleet.profiles import DeviceProfile, device_rng
from fl_sim.world.data import release_pages

ANSWER_TOKENS = 28  # the longest answer a device generates (captions included)


class DeviceCrash(RuntimeError):
    """A simulated device failure (``fleet.crash_prob``)."""


class DeviceBehaviour:
    name: ClassVar[str] = ""  # the defining module's dotted name: how a task names it (``load_behaviour``)
    Settings: ClassVar[type[BaseModel]]

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.name = cls.__module__

    @classmethod
    def run(cls, dev: DeviceRound, settings: BaseModel, content) -> dict:
        """One round of device ``dev``; returns the reply's records (``{name: record}``)."""
        raise NotImplementedError

    @classmethod
    def warm_up(cls, dev: DeviceRound) -> None:
        """Load, before round 1, what this behaviour needs beyond the model and data (optional)."""


@functools.cache
def load_behaviour(name: str) -> type[DeviceBehaviour]:
    """The behaviour module ``name`` defines (the ``DeviceBehaviour`` subclass defined there, one per module)."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError:
        raise FlSimError(f"unknown device behaviour {name!r}: no such module") from None
    found = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, DeviceBehaviour)
             and v.__module__ == name]
    if not found:
        raise FlSimError(f"module {name} defines no device behaviour")
    if len(found) > 1:
        raise FlSimError(f"module {name} defines {len(found)} device behaviours; a module holds one")
    return found[0]


@dataclass
class DeviceRound:
    """Device ``device_id`` in round ``round`` of the run whose environment is ``env``."""
    env: DeviceEnvironment
    device_id: int
    round: int

    @property
    def profile(self) -> DeviceProfile:
        return profile(self.env, self.device_id)

    @property
    def tier(self) -> str:
        return self.profile.tier

    @property
    def domain(self) -> str:
        """The domain of the data this device sees this round (its profile's schedule)."""
        return self.profile.domain_at(self.round)

    @property
    def model_path(self) -> str:
        return self.env.model_paths[self.tier]

    def rng(self, stream: int) -> np.random.Generator:
        """This device's random stream ``stream`` for this round (1: data, 2: the round's draws, 3: link)."""
        return device_rng(self.env.seed, self.device_id, self.round, stream)

    def crash(self, rng: np.random.Generator) -> None:
        """Fault injection: raise ``DeviceCrash`` with probability ``env.crash_prob`` (one draw of ``rng``)."""
        if self.env.crash_prob > 0 and rng.random() < self.env.crash_prob:
            raise DeviceCrash(f"device {self.device_id} crashed in round {self.round} (simulated)")

    def model(self):
        """``(model with adapters, initial adapter state)``: the tier's base model, once per process."""
        return model_cache.adapted_model(self.model_path, *self.env.adapters())

    def prompter(self):
        """How the tier's model reads questions and images (its own processor, or the shared tokenizer)."""
        return model_cache.prompter_for(self.model_path, self.env.cache_dir, self.env.catalog)

    def samples(self, n: int | None = None) -> dict:
        """The ``n`` (default ``samples_per_round``) samples this device sees this round: from its current
        domain, or during a gradual transition from two, in their shares (``DeviceProfile.mix_at``)."""
        n = self.env.samples_per_round if n is None else n
        mix = self.profile.mix_at(self.round)
        if len(mix) == 1:
            return self._draw(mix[0][0], n, self.rng(1))
        (old, _), (new, share) = mix
        k = int(round(share * n))
        parts = [self._draw(old, n - k, self.rng(1)), self._draw(new, k, self.rng(6))]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def _draw(self, domain: str, n: int, rng: np.random.Generator) -> dict:
        env = self.env
        ds = model_cache.split(domain, "train", env.train_size, env.seed, env.cache_dir, env.catalog)
        pools = model_cache.device_pools(domain, env.train_size, env.seed, env.cache_dir, env.num_devices,
                                         env.partition, env.partition_by, env.dirichlet_alpha, env.catalog)
        pool = pools[self.device_id]
        if len(pool) == 0:  # Dirichlet may leave a device without data of this domain: it sees the domain at large
            pool = np.arange(len(ds))
        idx = rng.choice(pool, size=n, replace=len(pool) < n)
        rows = ds[np.sort(idx)]
        release_pages(ds)  # the split's pages go back to the page cache: a worker holds none (fleets of any size)
        return {k: rows[k] for k in ("image", "question", "answer", "family")}


def online_accuracy(preds, data: dict) -> float:
    """Exact match of the device's answers on its own stream (captions excluded; NaN if none)."""
    vqa = data["family"] != "caption"
    if not vqa.any():
        return float("nan")
    return float(np.mean([p == a for p, a in zip(np.asarray(preds)[vqa], data["answer"][vqa])]))
