"""Quiet, offline libraries: no hub, no telemetry, no progress bars or warnings (the CLI, workers, benchmarks)."""

from __future__ import annotations

import os
import warnings


def quiet_data() -> None:
    """Offline, no telemetry, no warnings or progress bars from ``datasets`` (which imports no torch: what
    reads and checks a user's data comes before the models' libraries)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    warnings.filterwarnings("ignore")
    import datasets

    datasets.disable_progress_bars()


def quiet_libraries():
    """Offline, no telemetry, no progress bars or warnings from the libraries (the CLI and benchmarks)."""
    quiet_data()
    import logging

    # transformers imports torchao when it is installed (the lowbit extra): its CUDA-only kernels do not load
    # on a CPU machine, which it logs, and torch logs a deprecation while torchao registers its types
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
