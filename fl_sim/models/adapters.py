"""peft adapters on device MLLMs: LoRA on the language model, the projector (the family's connector:
``fl_sim.models.families``) trainable in full (or LoRA on its linears, ``projector="lora"``: far fewer
values to send), and optionally the word embeddings (peft trainable tokens; tied, so the output layer
learns them too).

Device tiers pretrain on the source domain only, so the words of shifted domains (dusk colours, novel
shapes, digits) keep their untrained initial embeddings: LoRA alone cannot make a model read or say a word
whose embedding is noise, trainable word embeddings can.

Only adapter parameters train and travel; ``adapter_state`` / ``load_adapter_state`` are the exact
round trip of peft's adapter-only state dict.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch


def _linear_targets(model, module, what: str) -> str:
    """peft ``target_modules`` matching every linear layer inside ``module`` of ``model``."""
    import re

    prefix = next((n for n, m in model.named_modules() if m is module and n), None)
    if prefix is None:
        raise ValueError(f"{type(model).__name__} has no {what} to put LoRA adapters on")
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)})
    if not leaves:
        raise ValueError(f"the {what} of {type(model).__name__} has no linear layers for LoRA")
    return rf"{re.escape(prefix)}\.(.*\.)?({'|'.join(map(re.escape, leaves))})"


def language_model_targets(model) -> str:
    """peft ``target_modules`` for every linear layer of ``model``'s language model (its decoder), found
    from the model itself: any decoder family (Phi, Llama, Qwen2, ...), never the vision tower or the
    output head."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    return _linear_targets(model, decoder, "language model (get_decoder)")


def projector_targets(model) -> str:
    """peft ``target_modules`` for every linear layer of ``model``'s connector (its family's)."""
    from fl_sim.models.families import family_of

    return _linear_targets(model, family_of(model).connector_module(model), "projector")


@dataclass(frozen=True)
class AdapterConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | None = None  # None: every linear layer of the language model (language_model_targets)
    modules_to_save: tuple[str, ...] | None = None  # None: the family's connector (the projector)
    tokens: bool = False  # train the embeddings of every non-special word (peft trainable_token_indices)
    projector: str = "full"  # "full": the projector trains in full (modules_to_save); "lora": LoRA on it


def add_adapters(model, cfg: AdapterConfig = AdapterConfig(), token_ids: list[int] | None = None):
    """Wrap ``model`` in a peft LoRA model; everything but the adapters (the projector and, with
    ``cfg.tokens``, the embeddings of ``token_ids``: by default every word of the shared tokenizer) is
    frozen."""
    from peft import LoraConfig, get_peft_model

    from fl_sim.models.families import family_of
    from fl_sim.world.tokenizer import SPECIALS

    extra, connector = {}, family_of(model).connector
    targets = cfg.target_modules or language_model_targets(model)
    save = [connector] if cfg.modules_to_save is None else list(cfg.modules_to_save)
    if cfg.projector == "lora":
        targets, save = f"({targets})|({projector_targets(model)})", [m for m in save if m != connector]
    elif cfg.projector != "full":
        raise ValueError(f"projector must be 'full' or 'lora', got {cfg.projector!r}")
    if cfg.tokens:
        vocab = model.config.text_config.vocab_size
        ids = list(range(len(SPECIALS), vocab)) if token_ids is None else list(token_ids)
        extra["trainable_token_indices"] = {"embed_tokens": ids}
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      modules_to_save=save, bias="none", **extra)
    with warnings.catch_warnings():  # peft reads transformers' deprecated alias (is_activation_checkpointing)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
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


def adapter_parameters(peft_model) -> dict[str, torch.nn.Parameter]:
    """The trainable parameters under their ``adapter_state`` keys (peft's state dict shares their storage)."""
    from peft import get_peft_model_state_dict

    key = {v.data_ptr(): k for k, v in get_peft_model_state_dict(peft_model).items()}
    out = {key[p.data_ptr()]: p for p in peft_model.parameters() if p.requires_grad and p.data_ptr() in key}
    if len(out) != len(key):
        raise ValueError(f"{len(key) - len(out)} adapter tensors have no trainable parameter")
    return out


def trainable_parameters(peft_model) -> list[torch.nn.Parameter]:
    return [p for p in peft_model.parameters() if p.requires_grad]
