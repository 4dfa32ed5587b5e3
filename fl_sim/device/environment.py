"""What an emulated device knows locally: the simulation's plumbing, never sent in a round's message.

A real device has its model on its own storage, its own data stream and its own faults; in the
simulation those are paths and settings shared by every device of a run. The server writes them once
to ``<run dir>/device_env.json``; each node learns that path when it is provisioned (the query that maps
nodes to devices) and keeps it in its ``Context.state``. Round messages then carry only what a real
device would receive (``fl_sim.protocol.device_task``), so their byte counts are honest.
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

FILE = "device_env.json"


class DeviceEnvironment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = Field(description="run seed: each device's streams derive from it and its id")
    cache_dir: str | None = Field(description="fl-sim cache (datasets, tokenizer)")
    fleet_path: str = Field(description="the fleet's profiles (fleet.json): tier and domain schedule per device")
    model_paths: dict[str, str] = Field(description="tier -> checkpoint directory of its base model")
    lora_r: int
    lora_tokens: bool
    projector: str = Field(description='"full" (trained in full) or "lora"')
    samples_per_round: int
    train_size: int
    num_devices: int
    partition: str
    partition_by: str
    dirichlet_alpha: float
    crash_prob: float = Field(description="chance a device raises during a round (fault injection)")
    corrupt_prob: float = Field(description="chance a CD-CCA upload is malformed (fault injection)")
    corrupt_downlink_prob: float = Field(description="chance a CD-CCA downlink arrives damaged (fault injection)")
    store_dir: str | None = Field(description="DWC version store (fl_sim.protocol.version_store), for CD-CCA devices")
    threads: int = Field(description="torch threads per emulated device")
    device: str = Field("cpu", description="where a worker runs its devices' models: cuda on a GPU share, else cpu")
    precision: str = Field("auto", description="fl_sim.models.placement precision of the devices' forward passes")
    domains: dict = Field(default_factory=dict, description="the run's domains backed by datasets on disk")

    @cached_property
    def catalog(self):
        """The run's domains backed by datasets on disk, as the ``DomainCatalog`` its devices read."""
        from fl_sim.config import UserDomainConfig
        from fl_sim.world.catalog import DomainCatalog

        return DomainCatalog({n: UserDomainConfig.model_validate(d) for n, d in self.domains.items()}, self.cache_dir)

    def adapters(self) -> tuple[int, bool, str]:
        """``runtime.adapted_model``'s adapter arguments."""
        return self.lora_r, self.lora_tokens, self.projector

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir).resolve() / FILE
        path.write_text(self.model_dump_json(indent=1))
        return path


def device_environment(cfg, fleet_path: Path, num_devices: int, model_paths: dict[str, str],
                       store_dir: Path | None) -> DeviceEnvironment:
    """The environment of the ``num_devices`` devices of the run ``cfg`` (an ``ExperimentConfig``);
    ``model_paths`` maps each device tier to its checkpoint."""
    f, s = cfg.fleet, cfg.strategy
    r, tokens, projector = s.adapters()
    return DeviceEnvironment(
        seed=cfg.seed, cache_dir=cfg.cache_dir, fleet_path=str(Path(fleet_path).resolve()),
        model_paths={k: str(v) for k, v in model_paths.items()},
        lora_r=r, lora_tokens=tokens, projector=projector, samples_per_round=f.samples_per_round,
        train_size=f.train_size, num_devices=num_devices,
        partition=f.partition, partition_by=f.partition_by, dirichlet_alpha=f.dirichlet_alpha,
        crash_prob=f.crash_prob, corrupt_prob=f.corrupt_prob, corrupt_downlink_prob=f.corrupt_downlink_prob,
        store_dir=str(Path(store_dir).resolve()) if store_dir else None, threads=cfg.simulation.threads_per_client,
        device="cuda" if cfg.simulation.num_gpus_per_client > 0 else "cpu", precision=cfg.simulation.precision,
        domains={k: v.model_dump(mode="json") for k, v in cfg.domains.items()})


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> DeviceEnvironment:
    return DeviceEnvironment.model_validate_json(Path(path).read_text())


def load_device_env(path: str) -> DeviceEnvironment:
    """The environment at ``path`` (cached per process until the file changes)."""
    return _load(str(path), Path(path).stat().st_mtime_ns)


@lru_cache(maxsize=4)
def _profiles(path: str, mtime_ns: int, declared: tuple[str, ...]):
    import json

    from fl_sim.fleet.profile_table import ProfileTable
    from fl_sim.fleet.profiles import load_trace

    tiers = sorted({row["tier"] for row in json.loads(Path(path).read_text())})
    return ProfileTable(load_trace(path, tiers, declared))  # columns: a worker holds ~100 B per registered device


def profile(env: DeviceEnvironment, device_id: int):
    """Device ``device_id``'s profile (``fl_sim.fleet.DeviceProfile``) from the run's fleet file."""
    return _profiles(env.fleet_path, Path(env.fleet_path).stat().st_mtime_ns, tuple(env.domains))[device_id]
