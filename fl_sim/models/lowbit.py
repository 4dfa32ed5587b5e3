"""Real low-bit weights: a derived tier's language model held as int8 tensors by torchao.

The zoo's tiers and ``quantize = "int8"`` tiers are simulated: their weights are fp32 values on the int8
grid (``fl_sim.models.quantize``), which costs fp32 memory and fp32 matmuls. With ``backend = "torchao"``
a derived tier's checkpoint records ``fl_sim_lowbit = "torchao-int8"`` in its config, and every process
that loads it (``mllm.load_mllm``: devices, the cloud's copy, evaluation) turns the language model's linear
layers into torchao ``Int8WeightOnlyConfig`` tensors (int8 per output channel, dequantised inside the
matmul). peft puts LoRA on them as on any linear layer; gradients reach the adapters through them. The
projector (trained in full) and the output layer (tied to the word embeddings) keep their simulated int8
values. docs/notes.md has its speed, memory and agreement against the simulated tier.
"""

from __future__ import annotations

import torch

from fl_sim import FlSimError

CONFIG_KEY = "fl_sim_lowbit"
TORCHAO_INT8 = "torchao-int8"
VERSION = "0.18.0"  # the torchao release this was measured with (extra "lowbit" of pyproject.toml)


def require_torchao(what: str) -> None:
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise FlSimError(f"{what}: backend = \"torchao\" needs torchao (pip install torchao=={VERSION}, or "
                         "pip install -e '.[lowbit]')") from None


def mark(model) -> None:
    """Record in ``model``'s config that its language model loads as torchao int8 weights."""
    setattr(model.config, CONFIG_KEY, TORCHAO_INT8)


def apply(model) -> None:
    """If ``model``'s config asks for it, make its language model's linear weights torchao int8, in place."""
    if getattr(model.config, CONFIG_KEY, None) != TORCHAO_INT8:
        return
    require_torchao(f"checkpoint {getattr(model, 'name_or_path', '')}")
    import warnings

    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(model.get_decoder(), Int8WeightOnlyConfig(), filter_fn=lambda m, _: isinstance(m, torch.nn.Linear))


def weight_bytes(model) -> int:
    """Bytes the model's parameters occupy in memory (a torchao tensor: its int8 data and scales)."""
    total = 0
    for p in model.parameters():
        inner = getattr(p, "qdata", None)
        if inner is not None:
            total += inner.numel() * inner.element_size()
            scale = getattr(p, "scale", None)
            total += scale.numel() * scale.element_size() if scale is not None else 0
        else:
            total += p.numel() * p.element_size()
    return total
