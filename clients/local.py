"""What one device does in a round, without Flower: see data, answer it, optionally adapt.

``run_device_round`` is called by the ClientApp (``clients/device.py``) and by the plain-loop
baseline in ``benchmarks/scale.py``, so both measure the very same work.
"""

from __future__ import annotations

import numpy as np
import torch

from fl_sim import runtime
from fl_sim.fleet import device_rng
from fl_sim.models.adapters import adapter_state, load_adapter_state, trainable_parameters
from fl_sim.models.mllm import answer
from fl_sim.models.train import per_sample_loss


class DeviceCrash(RuntimeError):
    """A simulated device failure (``fleet.crash_prob``)."""


def draw_samples(cfg: dict) -> dict:
    """The ``samples_per_round`` samples device ``cfg['device_id']`` sees in round ``cfg['round']``."""
    domain = cfg["domain"]
    ds = runtime.split(domain, "train", cfg["train_size"], cfg["seed"], cfg["cache_dir"] or None)
    pools = runtime.device_pools(domain, cfg["train_size"], cfg["seed"], cfg["cache_dir"] or None,
                                 cfg["num_devices"], cfg["partition"], cfg["partition_by"], cfg["alpha"])
    pool = pools[cfg["device_id"]]
    if len(pool) == 0:  # Dirichlet may leave a device without data of this domain: it sees the domain at large
        pool = np.arange(len(ds))
    rng = device_rng(cfg["seed"], cfg["device_id"], cfg["round"], 1)
    idx = rng.choice(pool, size=cfg["samples_per_round"], replace=len(pool) < cfg["samples_per_round"])
    rows = ds[np.sort(idx)]
    return {k: rows[k] for k in ("image", "question", "answer", "family")}


def run_device_round(cfg: dict, adapter: dict[str, torch.Tensor] | None) -> tuple[dict | None, dict]:
    """One device round. Returns ``(new adapter state or None, metrics)``.

    ``cfg`` holds: device_id, round, seed, domain, model_path, lora_r, local_steps, batch_size, lr,
    labels ("pseudo" = own answers, "oracle" = true answers), proximal_mu, crash_prob and data settings.
    ``adapter`` is the adapter state the device runs (``None`` = its base model).
    """
    rng = device_rng(cfg["seed"], cfg["device_id"], cfg["round"], 2)
    if cfg.get("crash_prob", 0.0) > 0 and rng.random() < cfg["crash_prob"]:
        raise DeviceCrash(f"device {cfg['device_id']} crashed in round {cfg['round']} (simulated)")
    torch.manual_seed(int(rng.integers(2**31)))
    model, initial = runtime.adapted_model(cfg["model_path"], cfg["lora_r"])
    load_adapter_state(model, adapter if adapter is not None else initial)
    pr = runtime.prompter(cfg["cache_dir"] or None)
    data = draw_samples(cfg)
    preds = answer(model, pr, data["image"], data["question"], max_new_tokens=28)
    vqa = data["family"] != "caption"
    online_acc = (float(np.mean([p == a for p, a in zip(np.asarray(preds)[vqa], data["answer"][vqa])]))
                  if vqa.any() else float("nan"))
    metrics = {"n_infer": len(preds), "n_train": 0, "online_acc": online_acc, "loss": float("nan")}
    if cfg["local_steps"] <= 0:
        return None, metrics
    targets = list(preds) if cfg["labels"] == "pseudo" else list(data["answer"])
    params = trainable_parameters(model)
    anchor = [p.detach().clone() for p in params] if cfg.get("proximal_mu", 0) > 0 else None
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    model.train()
    losses = []
    n = len(targets)
    for _ in range(cfg["local_steps"]):
        sel = rng.choice(n, size=min(cfg["batch_size"], n), replace=False)
        batch = pr.train_batch([data["question"][i] for i in sel], [targets[i] for i in sel])
        labels = batch.pop("labels")
        logits = model(**batch, pixel_values=pr.pixels(data["image"][sel])).logits
        loss = per_sample_loss(logits, labels).mean()
        if anchor is not None:  # FedProx proximal term
            loss = loss + cfg["proximal_mu"] / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    model.eval()
    metrics |= {"n_train": cfg["local_steps"] * min(cfg["batch_size"], n), "loss": float(np.mean(losses))}
    return adapter_state(model), metrics
