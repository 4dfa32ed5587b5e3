"""Simulated low-bit device weights: quantise -> dequantise ``nn.Linear`` weights, count packed bytes.

The weights stay ordinary fp32 ``nn.Linear`` so peft LoRA can wrap them; the values are exactly those a
low-bit kernel would see. ``packed_bytes`` is what the quantised tensor plus its fp16 scales occupy.
"""

from __future__ import annotations

import torch
from torch import nn

BITS = {"fp32": 32, "bf16": 16, "int8": 8, "int4": 4}


def quantize_dequantize(w: torch.Tensor, precision: str, group_size: int = 32) -> tuple[torch.Tensor, int]:
    """Return (w rounded to ``precision``, packed bytes). Symmetric; int8 per output channel, int4 per group."""
    if precision == "fp32":
        return w.clone(), w.numel() * 4
    if precision == "bf16":
        return w.to(torch.bfloat16).to(w.dtype), w.numel() * 2
    if precision == "int8":
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        q = torch.round(w / scale).clamp(-127, 127)
        return q * scale, w.numel() + w.shape[0] * 2
    if precision == "int4":
        out_f, in_f = w.shape
        pad = (-in_f) % group_size
        wp = torch.nn.functional.pad(w, (0, pad)).reshape(out_f, -1, group_size)
        scale = wp.abs().amax(dim=2, keepdim=True).clamp_min(1e-12) / 7
        q = torch.round(wp / scale).clamp(-8, 7)
        deq = (q * scale).reshape(out_f, -1)[:, :in_f]
        groups = wp.shape[0] * wp.shape[1]
        return deq, (w.numel() + 1) // 2 + groups * 2
    raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(BITS)}")


@torch.no_grad()
def quantize_linears(module: nn.Module, precision: str, group_size: int = 32) -> dict:
    """Quantise every ``nn.Linear`` weight in ``module`` in place. Returns byte counts and max error."""
    packed, dense, max_err = 0, 0, 0.0
    for lin in module.modules():
        if isinstance(lin, nn.Linear):
            deq, nbytes = quantize_dequantize(lin.weight.data, precision, group_size)
            max_err = max(max_err, (deq - lin.weight.data).abs().max().item())
            lin.weight.data.copy_(deq)
            packed += nbytes
            dense += lin.weight.numel() * 4
    return {"packed_linear_bytes": packed, "fp32_linear_bytes": dense, "max_abs_error": max_err}
