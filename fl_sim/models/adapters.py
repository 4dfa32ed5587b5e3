"""peft adapters on device MLLMs: LoRA on the language model, the projector trainable in full.

Only adapter parameters train and travel; ``adapter_state`` / ``load_adapter_state`` are the exact
round trip of peft's adapter-only state dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

LM_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|dense|fc1|fc2)"


@dataclass(frozen=True)
class AdapterConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str = LM_TARGETS
    modules_to_save: tuple[str, ...] = field(default=("multi_modal_projector",))


def add_adapters(model, cfg: AdapterConfig = AdapterConfig()):
    """Wrap ``model`` in a peft LoRA model; everything but the adapters (and the projector) is frozen."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
                      modules_to_save=list(cfg.modules_to_save), bias="none")
    return get_peft_model(model, lora)


def adapter_state(peft_model) -> dict[str, torch.Tensor]:
    """Adapter-only state dict (LoRA A/B and the projector copy), detached CPU tensors."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def load_adapter_state(peft_model, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter state has unexpected keys: {unexpected[:3]}")


def trainable_parameters(peft_model) -> list[torch.nn.Parameter]:
    return [p for p in peft_model.parameters() if p.requires_grad]
