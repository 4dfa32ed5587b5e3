"""The run's domains beyond the built-in world: its datasets on disk (``[domains.NAME]``), as one object
handed to whoever reads their data, words or names, never a process-wide registry.

``DomainCatalog`` is hashable (by each domain's name and settings, and the cache), so the per-process caches
of ``fl_sim.device.model_cache`` key on it; ``NO_DOMAINS`` is the built-in world alone.
"""

from __future__ import annotations

from fl_sim.world import user_data
from fl_sim.world.domains import DOMAINS


class DomainCatalog:
    def __init__(self, specs: dict | None = None, cache_dir: str | None = None):
        """``specs``: name -> ``fl_sim.config.UserDomainConfig`` (validated by the caller), in declared order;
        ``cache_dir``: where their converted splits are cached."""
        self.specs = dict(specs or {})
        user_data.check_names(self.specs)
        self.cache_dir = cache_dir
        self._key = (tuple((n, s.model_dump_json()) for n, s in self.specs.items()), cache_dir)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, DomainCatalog) and self._key == other._key

    def __repr__(self) -> str:
        return f"DomainCatalog({list(self.specs)}, cache_dir={self.cache_dir!r})"

    def __contains__(self, name) -> bool:
        return name in self.specs

    def __bool__(self) -> bool:
        return bool(self.specs)

    def names(self) -> list[str]:
        return list(self.specs)

    def build_all(self, cell_px: int = 16) -> None:
        """Convert every domain's dataset now (each problem with the data is its one-line error)."""
        for name, spec in self.specs.items():
            user_data.build(name, spec, cell_px, self.cache_dir)

    def load(self, name: str, split: str, n: int, seed: int, cell_px: int):
        """``n`` samples (all when there are fewer) of domain ``name``'s ``split`` (``user_data.load``)."""
        return user_data.load(name, self.specs[name], split, n, seed, cell_px, self.cache_dir)

    def data_key(self, name: str, cell_px: int = 16) -> str:
        """What identifies domain ``name``'s converted data (its cache folder: keyed by content and settings)."""
        return user_data.build(name, self.specs[name], cell_px, self.cache_dir).name

    def words(self, cell_px: int = 16) -> list[str]:
        """Every word of the domains' questions and answers (the shared tokenizer's extra words)."""
        from fl_sim.cache import read_meta

        out: set[str] = set()
        for name, spec in self.specs.items():
            out |= set(read_meta(user_data.build(name, spec, cell_px, self.cache_dir)).get("words", []))
        return sorted(out)


NO_DOMAINS = DomainCatalog()


def catalog_of(cfg) -> DomainCatalog:
    """The catalog of an experiment (``fl_sim.config.ExperimentConfig``): its ``[domains]`` in its cache."""
    return DomainCatalog(cfg.domains, cfg.cache_dir) if cfg.domains else NO_DOMAINS


def is_user_domain(name: str) -> bool:
    """Whether ``name`` can only be a dataset on disk (user domains are neither built in nor ``A+B``)."""
    return name not in DOMAINS and "+" not in name
