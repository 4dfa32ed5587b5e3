"""What a run will need, estimated from its settings before anything starts, against what this machine has.

A coarse model, per term (bytes):

    driver and models           2 GiB
    Ray workers                 0.6 GiB each (CPUs / num_cpus_per_client workers: Flower's pool size)
    the cloud's actors          0.6 GiB each (teacher replicas, AKD and evaluation actors: ``[cloud]``)
    adapters                    4 B x LoRA parameters (``strategy.lora_r`` x layers x (8 width + 3 FFN
                                width) per tier: q, k, v, o, gate, up, down) x 4 (weights, gradients, two
                                Adam moments), in the driver, each Ray worker and each cloud actor
    registered devices          500 B each in the driver (profile), plus 150 B per domain in the driver and
                                each worker (device partitions); Flower holds nothing per device
                                (docs/notes.md, retired investigations);
                                computing a domain's partitions the first time takes 2 KB per device
                                in the driver, one domain at a time
    datasets                    7.5 KB per sample read (a 48x48 RGB image and its text), memory-mapped: the test
                                splits in the driver (evaluation reads them whole) and the rows each
                                process reads (a round's samples in a worker); the rest stays on disk, in
                                pages the kernel can drop; building a split streams it to disk and holds
                                one chunk of samples and Arrow's batches whatever its size (counted as
                                400 MiB; docs/notes.md)
    a device round              200 KB per sample in a worker (images, visual tokens, activations)
    the cloud's round           200 KB per uploaded sample (teacher targets with logits and hidden states)

Disk: the datasets once (16 KB per sample on disk: Arrow stores the image as nested lists with their
offsets; docs/notes.md), and per round about 4 KB of results and
TensorBoard events plus 40 bytes per sampled device. ``simulation.check_capacity = false`` skips the check (a cluster's
workers have their own memory).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fl_sim import FlSimError
from fl_sim.report.table import human_bytes

GIB = 2**30
DRIVER_BYTES = 2 * GIB
WORKER_BYTES = 0.6 * GIB
PER_DEVICE_BYTES = 500
PER_DEVICE_DOMAIN_BYTES = 150
PER_SAMPLE_BYTES = 7_500
DISK_PER_SAMPLE_BYTES = 16_000
SPLIT_BUILD_BYTES = 400 * 2**20  # building one split, an upper bound (57 MiB anonymous at 200,000 samples)
PARTITION_BUILD_BYTES = 2_000  # per device, computing one domain's partitions (1.7 KB measured at 100,000)
ROUND_SAMPLE_BYTES = 200_000
ROUND_DISK_BYTES = 4_000
BUILTIN_DOMAINS = 4  # every run evaluates the built-in domains (fl_sim.callbacks.evaluation.eval_domains)
ADAPTER_COPIES = 4  # weights, gradients and two Adam moments


def domains(cfg) -> int:
    """Domains whose splits a run holds: the built-in ones, its datasets on disk (``[domains]``) and the
    combinations its fleet may meet (a trace's schedules are not read here: they name at most the domains a
    drawn schedule could)."""
    f = cfg.fleet
    named = set(f.schedule.domains) | {f.schedule.first} if f.schedule is not None else set(f.shift_domains)
    return BUILTIN_DOMAINS + len(cfg.domains) + sum(1 for d in named if "+" in d)


def tier_shapes(cfg) -> dict[str, tuple[int, int, int]]:
    """``{tier: (width, layers, FFN width)}`` of each device tier's language model: the zoo's presets, or
    the checkpoints' ``config.json`` (a tier whose config does not read is left out: ``check_model_dirs``
    names it)."""
    import json

    from fl_sim.models.presets import get_zoo

    if not cfg.models.tiers:
        return {name: (p.hidden, p.layers, 4 * p.hidden) for name, p in get_zoo(cfg.zoo).tiers.items()}
    shapes = {}
    for name, spec in cfg.models.tiers.items():
        path = Path(spec if isinstance(spec, str) else spec.checkpoint).expanduser() / "config.json"
        try:
            t = json.loads(path.read_text()).get("text_config") or {}
            h = int(t.get("hidden_size", 0))
            shapes[name] = (h, int(t.get("num_hidden_layers", 0)), int(t.get("intermediate_size") or 4 * h))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return {n: s for n, s in shapes.items() if s[0] > 0}


def adapter_bytes(cfg) -> int:
    """Bytes of one copy of every tier's LoRA adapters in training (``ADAPTER_COPIES``)."""
    params = sum(cfg.strategy.lora_r * layers * (8 * h + 3 * ffn) for h, layers, ffn in tier_shapes(cfg).values())
    return 4 * ADAPTER_COPIES * params


def workers(cfg) -> int:
    sim = cfg.simulation
    cpus = sim.num_cpus or os.cpu_count() or 1
    return max(1, int(cpus / sim.num_cpus_per_client))  # as Flower sizes its actor pool


def needs(cfg, n_devices: int, cloud_workers: int = 0) -> dict[str, dict[str, float]]:
    """``{"memory": {term: bytes}, "disk": {term: bytes}}`` of the run ``cfg`` with ``n_devices`` devices
    (``cloud_workers``: the cloud's own actors, ``fl_sim.app.preflight.cloud_workers``)."""
    f, s = cfg.fleet, cfg.strategy
    w = workers(cfg)
    sampled = min(n_devices, s.clients_per_round * s.over_commit)
    uploaded = sampled * f.samples_per_round * s.uts.budget
    n_dom = domains(cfg)
    data = (n_dom * cfg.eval.n_test + sampled * f.samples_per_round) * PER_SAMPLE_BYTES + SPLIT_BUILD_BYTES
    memory = {"driver and models": DRIVER_BYTES,
              "Ray workers (simulation.num_cpus / num_cpus_per_client)": w * WORKER_BYTES,
              "the cloud's actors ([cloud], strategy.akd.workers)": cloud_workers * WORKER_BYTES,
              "adapters (strategy.lora_r)": (w + cloud_workers + 1) * adapter_bytes(cfg),
              "registered devices (fleet.num_devices)": n_devices * (PER_DEVICE_BYTES + PARTITION_BUILD_BYTES
                                                                     + PER_DEVICE_DOMAIN_BYTES * n_dom * (w + 1)),
              "datasets (eval.n_test, fleet.samples_per_round)": data,
              "device rounds (fleet.samples_per_round)": min(w, sampled) * f.samples_per_round * ROUND_SAMPLE_BYTES,
              "uploads a round (fleet.samples_per_round, strategy.clients_per_round)": uploaded * ROUND_SAMPLE_BYTES}
    disk = {"datasets (fleet.train_size, eval.n_test)": n_dom * (f.train_size + cfg.eval.n_test)
                                                          * DISK_PER_SAMPLE_BYTES,
            "results (rounds)": cfg.rounds * (ROUND_DISK_BYTES + 40 * sampled)}
    return {"memory": memory, "disk": disk}


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``; all physical memory where that is unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def free_disk(path: str | Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free



def check(cfg, n_devices: int, cloud_workers: int = 0) -> None:
    """A one-line ``FlSimError`` with the estimate when the run cannot fit this machine."""
    if not cfg.simulation.check_capacity:
        return
    est = needs(cfg, n_devices, cloud_workers)
    for kind, have in (("memory", available_memory()), ("disk", free_disk(cfg.output_dir))):
        total = sum(est[kind].values())
        if total > have:
            top = max(est[kind], key=est[kind].get)
            need, biggest, free = (human_bytes(x, binary=True) for x in (total, est[kind][top], have))
            raise FlSimError(f"the run would need about {need} of {kind} ({top}: {biggest}), "
                             f"and this machine has {free} available; make the fleet, samples or rounds "
                             "smaller, or set simulation.check_capacity = false (a cluster)")
