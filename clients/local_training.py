"""local_training: the device answers its stream, then fine-tunes its adapters on it and sends them back.

Devices of fedavg, fedprox, tent (and source-only, with no steps). The server's message holds the task
and, when the tier has adapters to run, an ``"adapter"`` ArrayRecord; the reply holds ``"metrics"``
(``n_infer``, ``n_train``, ``online_acc``, ``loss``) and, after training, the new ``"adapter"``.

Local objective, per step on a batch of the round's samples:

    ce        CE on the device's own answers (``labels = "pseudo"``) or the true ones (``"oracle"``)
    entropy   mean entropy of the answer-token distributions (TENT), never using any label
  + proximal_mu / 2 * ||w - w_received||^2                      (FedProx's proximal term; 0 = off)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from clients.behaviour import ANSWER_TOKENS, DeviceBehaviour, DeviceRound, online_accuracy
from fl_sim.models import placement
from fl_sim.models.adapters import adapter_state, load_adapter_state, trainable_parameters
from fl_sim.models.mllm import answer, with_pixels
from fl_sim.models.train import per_sample_loss


class LocalTrainingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    local_steps: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    labels: Literal["pseudo", "oracle"]
    objective: Literal["ce", "entropy"]
    proximal_mu: float = Field(ge=0)


def answer_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean entropy of the next-token distributions at the answer positions (TENT's objective)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    ent = -(logp.exp() * logp).sum(-1)
    mask = (labels[:, 1:] != -100).float()
    return (ent * mask).sum(1) / mask.sum(1).clamp_min(1)


def proximal_term(params: list[torch.Tensor], anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx: ``mu / 2 * sum ||p - a||^2`` over the trainable parameters."""
    return mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))


def local_objective(logits, labels, s: LocalTrainingSettings, params, anchor) -> torch.Tensor:
    """The batch loss of ``s.objective``, plus the proximal term when ``s.proximal_mu > 0``."""
    loss = answer_entropy(logits, labels).mean() if s.objective == "entropy" else per_sample_loss(logits, labels).mean()
    if s.proximal_mu > 0:
        loss = loss + proximal_term(params, anchor, s.proximal_mu)
    return loss


def run_local_round(dev: DeviceRound, s: LocalTrainingSettings, adapter: dict[str, torch.Tensor] | None
                    ) -> tuple[dict[str, torch.Tensor] | None, dict]:
    """``(new adapter state or None, metrics)`` of one round; ``adapter`` is what the device runs
    (``None``: its tier's initial adapters, i.e. the base model)."""
    rng = dev.rng(2)
    dev.crash(rng)
    torch.manual_seed(int(rng.integers(2**31)))
    model, initial = dev.model()
    load_adapter_state(model, adapter if adapter is not None else initial)
    pr = dev.prompter()
    data = dev.samples()
    preds = answer(model, pr, data["image"], data["question"], max_new_tokens=ANSWER_TOKENS)
    metrics = {"n_infer": len(preds), "n_train": 0, "online_acc": online_accuracy(preds, data), "loss": float("nan")}
    if s.local_steps <= 0:
        return None, metrics
    targets = list(preds) if s.labels == "pseudo" else list(data["answer"])
    params = trainable_parameters(model)
    anchor = [p.detach().clone() for p in params] if s.proximal_mu > 0 else None
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    model.train()
    losses, n = [], len(targets)
    for _ in range(s.local_steps):
        sel = rng.choice(n, size=min(s.batch_size, n), replace=False)
        batch = pr.train_batch([data["question"][i] for i in sel], [targets[i] for i in sel])
        batch = {k: placement.to_model(model, v) for k, v in batch.items()}
        labels = batch.pop("labels")
        with placement.autocast():
            pixels = placement.to_model(model, pr.pixels(data["image"][sel]))
            logits = model(**with_pixels(model, batch.pop("input_ids"), pixels), **batch).logits
        loss = local_objective(logits, labels, s, params, anchor)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    model.eval()
    metrics |= {"n_train": s.local_steps * min(s.batch_size, n), "loss": float(np.mean(losses))}
    return adapter_state(model), metrics


class LocalTraining(DeviceBehaviour):
    Settings = LocalTrainingSettings

    @classmethod
    def run(cls, dev, settings, content):
        from flwr.app import MetricRecord

        from fl_sim.protocol.records import from_array_record, to_array_record

        adapter = from_array_record(content["adapter"]) if "adapter" in content else None
        new_state, metrics = run_local_round(dev, settings, adapter)
        reply = {"metrics": MetricRecord({k: float(v) for k, v in metrics.items()})}
        if new_state is not None:
            reply["adapter"] = to_array_record(new_state)
        return reply
