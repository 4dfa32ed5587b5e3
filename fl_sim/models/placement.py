"""Where a process runs its models: one torch device per process, and the precision of its forward passes.

The server process runs on ``simulation.device`` (teacher labelling, AKD, DWC, evaluation); a Ray worker
runs its devices' models on its GPU share when ``simulation.num_gpus_per_client > 0`` (Ray sets the
worker's ``CUDA_VISIBLE_DEVICES``, so its share is ``cuda``), on the CPU otherwise.

Conventions that keep CPU runs bit-identical and GPU runs simple:

- models move to the device once, when ``fl_sim.device.model_cache`` loads them (its caches are keyed by device);
- tensors passed between functions (visual tokens, targets, adapter states, payloads) live on the CPU;
  a function that runs a model moves its inputs to the model (``to_model``) and its outputs back;
- ``autocast()`` is bf16 autocast on CUDA and nothing on the CPU (``precision = "auto"``), because bf16 matmuls
  are slower than fp32 on CPUs without AMX and change the CPU figures.
"""

from __future__ import annotations

import contextlib

import torch

from fl_sim import FlSimError

_STATE = {"device": torch.device("cpu"), "bf16": False}


def resolve(name: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"`` / ``"cuda:N"`` as a ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise FlSimError(f"simulation.device = {name!r}, but torch finds no CUDA device on this machine "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                             "use device = 'cpu' or 'auto'")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise FlSimError(f"simulation.device = {name!r}, but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
        return torch.device("cuda", index)
    raise FlSimError(f"simulation.device = {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def use(device: str | torch.device, precision: str = "auto") -> torch.device:
    """Make ``device`` this process's device; ``precision``: ``"auto"`` (bf16 autocast on CUDA only),
    ``"fp32"`` or ``"bf16"`` (bf16 autocast on whatever device)."""
    dev = resolve(device) if isinstance(device, str) else torch.device(device)
    if precision not in ("auto", "fp32", "bf16"):
        raise FlSimError(f"simulation.precision = {precision!r}: expected 'auto', 'fp32' or 'bf16'")
    _STATE["device"] = dev
    _STATE["bf16"] = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    if dev.type == "cuda":
        deterministic_cuda()
    return dev


def current() -> torch.device:
    return _STATE["device"]


def autocasts() -> bool:
    """Whether this process's forward passes run under bf16 autocast."""
    return _STATE["bf16"]


def autocast():
    """bf16 autocast on this process's device when its precision says so; otherwise nothing."""
    if not _STATE["bf16"]:
        return contextlib.nullcontext()
    return torch.autocast(_STATE["device"].type, dtype=torch.bfloat16)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def to_model(model, *tensors):
    """``tensors`` on ``model``'s device (one tensor: the tensor itself, several: a tuple)."""
    dev = model_device(model)
    moved = tuple(t.to(dev) for t in tensors)
    return moved[0] if len(moved) == 1 else moved


def release() -> None:
    """Give cached, unused GPU memory back (between rounds: many Ray workers share one GPU)."""
    if _STATE["device"].type == "cuda":
        torch.cuda.empty_cache()


def deterministic_cuda() -> None:
    """What can be made deterministic on CUDA: deterministic algorithms where torch has them (a warning,
    not an error, where it has none), cuBLAS with a fixed workspace, no cuDNN autotuning. Atomics in the
    kernels that have no deterministic version still make two runs differ in the last bits."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def check(sim, cloud=None) -> None:
    """``simulation.device``, ``num_gpus_per_client`` and the cloud actors' GPU shares (``cloud``: the
    ``[cloud]`` section) of a run on this machine (a local run; on a cluster the GPUs are the cluster's): one
    ``FlSimError`` for what cannot work."""
    resolve(sim.device)
    if cloud is not None and cloud.gpus() > 0 and not sim.ray_address:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if cloud.gpus() > n:
            raise FlSimError(f"cloud: an actor asks for {cloud.gpus():g} GPU, but this machine has {n} CUDA "
                             "device(s); set cloud.teacher_gpus, akd_gpus and eval_gpus to at most that")
    if sim.num_gpus_per_client > 0 and not sim.ray_address:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise FlSimError(f"simulation.num_gpus_per_client = {sim.num_gpus_per_client}, but this machine has no "
                             "CUDA device; set it to 0")
        if sim.num_gpus_per_client > n:
            raise FlSimError(f"simulation.num_gpus_per_client = {sim.num_gpus_per_client} is more than the {n} "
                             "GPU(s) of this machine: no virtual client could ever start")


def gpu_count(sim, cloud_gpus: float = 0.0) -> int:
    """GPUs a local Ray instance may hand out: none unless virtual clients or cloud actors ask for a share."""
    if sim.num_gpus_per_client <= 0 and cloud_gpus <= 0:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
