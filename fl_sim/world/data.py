"""Domain datasets as Hugging Face ``datasets.Dataset`` (cached on disk) and non-IID device partitions."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from fl_sim import FlSimError
from fl_sim.cache import cache_root, get_or_build, stable_hash
from fl_sim.world.catalog import NO_DOMAINS, DomainCatalog
from fl_sim.world.domains import DOMAINS, FAMILIES, Domain, get_domain, make_sample
from fl_sim.world.features import split_features

SPLITS = {"train": 0, "test": 1}
GENERATOR_VERSION = 1
BUILD_CHUNK = 1024  # samples generated at a time when a split is built (streamed to disk)


def domain_key(name: str) -> int:
    """The integer that seeds ``name``'s samples: its index for a built-in domain (as it always was),
    else a stable hash of the name."""
    if name in DOMAINS:
        return list(DOMAINS).index(name)
    import zlib

    return 1000 + zlib.crc32(name.encode())


def sample_stream(domain: str | Domain, split: str, seed: int, cell_px: int, families=None,
                  catalog: DomainCatalog = NO_DOMAINS):
    """Endless deterministic generator of samples (used for pretraining's fresh batches); for a domain
    backed by a dataset on disk, its rows drawn at random (with replacement)."""
    if isinstance(domain, str) and domain in catalog:
        yield from _user_stream(catalog, domain, split, seed, cell_px)
        return
    dom = domain if isinstance(domain, Domain) else get_domain(domain)
    rng = np.random.default_rng([seed, domain_key(dom.name), SPLITS[split], 7])
    while True:
        yield make_sample(dom, rng, split, cell_px, families)


def _user_stream(catalog: DomainCatalog, domain: str, split: str, seed: int, cell_px: int):
    ds = catalog.load(domain, split, 10**12, seed, cell_px)
    cols = {k: ds[k] for k in ("image", "question", "answer", "family")}
    rng = np.random.default_rng([seed, domain_key(domain), SPLITS[split], 7])
    while True:
        i = int(rng.integers(len(ds)))
        yield {k: v[i] for k, v in cols.items()} | {"domain": domain, "caption": ""}


def generate(domain: str, split: str, n: int, seed: int, cell_px: int, families=None, start: int = 0) -> list[dict]:
    """Samples ``start`` to ``start + n - 1`` of ``domain``/``split``; sample ``i`` depends only on (seed,
    domain, split, i)."""
    dom = get_domain(domain)
    if split not in SPLITS:
        raise FlSimError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    out = []
    for i in range(start, start + n):
        rng = np.random.default_rng([seed, domain_key(domain), SPLITS[split], i])
        s = make_sample(dom, rng, split, cell_px, families)
        s.pop("objects")
        out.append(s)
    return out


def _stream(domain: str, split: str, n: int, seed: int, cell_px: int):
    """Samples 0 to ``n - 1`` of ``domain``/``split``, generated ``BUILD_CHUNK`` at a time."""
    for start in range(0, n, BUILD_CHUNK):
        yield from generate(domain, split, min(BUILD_CHUNK, n - start), seed, cell_px, start=start)


def load_split(domain: str, split: str, n: int, seed: int = 0, cell_px: int = 16, cache_dir: str | None = None,
               catalog: DomainCatalog = NO_DOMAINS):
    """The cached ``datasets.Dataset`` of ``n`` samples of ``domain``/``split`` (numpy format); for a domain
    of ``catalog`` (a dataset on disk), ``n`` of its rows (all when it has fewer: ``fl_sim.world.user_data``)."""
    from datasets import Dataset, load_from_disk

    if domain in catalog:
        return catalog.load(domain, split, n, seed, cell_px)
    get_domain(domain)
    if n < 1:
        raise FlSimError(f"a split of {domain}/{split} needs at least one sample, got {n}")
    key = stable_hash({"v": GENERATOR_VERSION, "domain": domain, "split": split, "n": n, "seed": seed,
                       "cell_px": cell_px, "families": FAMILIES})
    folder = cache_root(cache_dir) / "data" / f"{domain}-{split}-{key}"

    def build(tmp: Path) -> dict:
        # streamed to disk (Dataset.from_generator writes Arrow batches as they come): the build holds one
        # chunk of samples, not the split, whose 200,000 samples for a 100,000-device fleet would not fit
        # in memory as Python objects (docs/notes.md)
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f".{tmp.name}-gen.") as scratch:
            ds = Dataset.from_generator(_stream, features=split_features(cell_px), cache_dir=scratch,
                                        gen_kwargs={"domain": domain, "split": split, "n": n, "seed": seed,
                                                    "cell_px": cell_px})
            ds.save_to_disk(str(tmp))
        return {"domain": domain, "split": split, "n": n}

    get_or_build(folder, build, f"dataset {domain}/{split}")
    # memory-mapped: a process holds only the pages of the rows it reads, shared with every other process
    # through the page cache (a device touches its own few rows of a 10,000-device split). A rebuild of the
    # entry writes new files and renames them into place, so files already mapped stay valid.
    return load_from_disk(str(folder)).with_format("numpy")


def release_pages(ds) -> None:
    """Drop this process's mapping of ``ds``'s memory-mapped Arrow files (``madvise(MADV_DONTNEED)``; Linux,
    a no-op elsewhere): the pages stay in the kernel's page cache, shared and reclaimable, and the next
    read maps them again. The files are read-only, so an array read before (a copy, or a view into the
    mapping) keeps its values: a view maps the same bytes again when touched.

    Why: a read maps whole page-cache folios around each row (up to 2 MiB with large folios and an 8 MiB
    read-ahead, as on this project's machines), so a worker reading a few random rows a round of a 200,000-row
    split ends up mapping most of it: 2.5 GiB after 3,200 rows of one domain, measured (docs/notes.md)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    files = {f["filename"] for f in getattr(ds, "cache_files", [])}
    if not files:
        return
    try:  # where the files are mapped now (read each time: a freed split's addresses may hold other memory)
        with open("/proc/self/maps") as f:
            spans = [line.split() for line in f]
    except OSError:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for span in spans:
        if len(span) >= 6 and span[5] in files:
            start, end = (int(x, 16) for x in span[0].split("-"))
            libc.madvise(start, end - start, 4)  # MADV_DONTNEED


def _partitioner(dataset, num_partitions: int, by: str, alpha: float, seed: int, kind: str):
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if by not in dataset.column_names:
        raise FlSimError(f"unknown partition column {by!r}; allowed: {', '.join(dataset.column_names)}")
    if kind == "dirichlet":
        part = DirichletPartitioner(num_partitions=num_partitions, partition_by=by, alpha=alpha,
                                    min_partition_size=0, self_balancing=False, seed=seed)
    elif kind == "iid":
        part = IidPartitioner(num_partitions=num_partitions)
    else:
        raise FlSimError(f"unknown partitioner {kind!r}; allowed: dirichlet, iid")
    part.dataset = dataset.with_format(None)
    return part


def partition(dataset, num_partitions: int, by: str = "domain", alpha: float = 0.5, seed: int = 0,
              kind: str = "dirichlet") -> list:
    """Split ``dataset`` across devices with a flwr-datasets partitioner.

    ``kind="dirichlet"`` draws each device's share of every ``by`` value (domain or answer) from a
    Dirichlet(``alpha``); ``kind="iid"`` splits uniformly.
    """
    part = _partitioner(dataset, num_partitions, by, alpha, seed, kind)
    return [part.load_partition(i).with_format("numpy") for i in range(num_partitions)]


def partition_indices(part) -> list[np.ndarray] | None:
    """The row indices of every partition of the flwr-datasets partitioner ``part``, as its
    ``load_partition`` selects them, without building a dataset per partition (100,000 datasets take
    most of an hour). Dirichlet: the partitioner's own assignment; IID: ``datasets``' contiguous shards,
    which ``np.array_split`` lays out the same way. tests/unit/world checks both against
    ``load_partition``. ``None`` for another partitioner (or a flwr-datasets that keeps its assignment
    elsewhere)."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    n = part.num_partitions
    check = getattr(part, "_check_num_partitions_correctness_if_needed", None)
    if check is not None:  # what load_partition checks first (more partitions than rows)
        check()
    if isinstance(part, IidPartitioner):
        return np.array_split(np.arange(len(part.dataset)), n)
    if isinstance(part, DirichletPartitioner) and hasattr(part, "_determine_partition_id_to_indices_if_needed"):
        part._determine_partition_id_to_indices_if_needed()
        assigned = getattr(part, "_partition_id_to_indices", None)
        if isinstance(assigned, dict) and len(assigned) == n:
            return [np.asarray(assigned[i], dtype=np.int64) for i in range(n)]
    return None


def partition_rows(dataset, num_partitions: int, column: str, by: str = "domain", alpha: float = 0.5,
                   seed: int = 0, kind: str = "dirichlet") -> list[np.ndarray]:
    """``column`` of each partition of ``partition(dataset, ...)``: the column is read once and indexed
    by each partition's rows (``partition_indices``), so a 100,000-device fleet partitions in seconds."""
    part = _partitioner(dataset, num_partitions, by, alpha, seed, kind)
    if (rows := partition_indices(part)) is None:  # partition by partition
        return [np.asarray(part.load_partition(i).with_format("numpy")[:][column]) for i in range(num_partitions)]
    values = np.asarray(dataset.with_format("numpy", columns=[column])[:][column])
    return [values[r] for r in rows]
