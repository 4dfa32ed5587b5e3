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


def answer_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean entropy of the next-token distributions at the answer positions (TENT's objective)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    ent = -(logp.exp() * logp).sum(-1)
    mask = (labels[:, 1:] != -100).float()
    return (ent * mask).sum(1) / mask.sum(1).clamp_min(1)


def adapted(cfg: dict):
    """The device's model with its adapters (``runtime.adapted_model``) as the device config describes them."""
    return runtime.adapted_model(cfg["model_path"], cfg["lora_r"], cfg["lora_tokens"], cfg.get("projector", "full"))


def run_device_round(cfg: dict, adapter: dict[str, torch.Tensor] | None) -> tuple[dict | None, dict]:
    """One device round. Returns ``(new adapter state or None, metrics)``.

    ``cfg`` holds: device_id, round, seed, domain, model_path, lora_r, lora_tokens, projector ("full" or
    "lora"), local_steps, batch_size, lr, labels ("pseudo" = own answers, "oracle" = true answers), proximal_mu, objective ("ce", or "entropy"
    for TENT), crash_prob and data settings.
    ``adapter`` is the adapter state the device runs (``None`` = its base model).
    """
    rng = device_rng(cfg["seed"], cfg["device_id"], cfg["round"], 2)
    if cfg.get("crash_prob", 0.0) > 0 and rng.random() < cfg["crash_prob"]:
        raise DeviceCrash(f"device {cfg['device_id']} crashed in round {cfg['round']} (simulated)")
    torch.manual_seed(int(rng.integers(2**31)))
    model, initial = adapted(cfg)
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
        if cfg.get("objective", "ce") == "entropy":  # TENT: minimise the entropy of the own answers
            loss = answer_entropy(logits, labels).mean()
        else:
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


_WARM: set = set()  # what this worker process has already warmed up (see ``warm_up``)


def warm_up(cfgs: list[dict]) -> int:
    """Load, once per worker process, what the devices of ``cfgs`` (device configs) will need.

    Each tier's model with adapters (and one answer through it, so lazy initialisation happens now),
    each domain's split and device partition, and the novelty reference token of CD-CCA devices: the
    per-process caches of ``fl_sim.runtime`` that a worker would otherwise fill in its first round.
    Returns how many configs did new work.
    """
    done = 0
    for cfg in cfgs:
        key = (cfg["model_path"], cfg["lora_r"], cfg["lora_tokens"], cfg.get("projector", "full"), cfg["domain"], cfg["train_size"], cfg["seed"], cfg["num_devices"])
        if key in _WARM:
            continue
        _WARM.add(key)
        model, _ = adapted(cfg)
        pr = runtime.prompter(cfg["cache_dir"] or None)
        data = draw_samples(cfg | {"samples_per_round": 1})
        if (cfg["model_path"], "answer") not in _WARM:
            _WARM.add((cfg["model_path"], "answer"))
            answer(model, pr, data["image"], data["question"], max_new_tokens=2)
        if cfg.get("mode") == "cdcca" and cfg.get("uts_tokens") == "novelty":
            runtime.reference_token(cfg["model_path"], cfg["cache_dir"] or None)
        done += 1
    return done


# ---------------------------------------------------------------- CD-CCA devices: apply DWC, run UTS
def held_weights(cfg: dict, initial: dict[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
    """The adapter weights a device at ``version`` holds (version 0 = the tier's initial adapters).

    Devices of one tier at one version hold identical weights, so they are stored once per tier and
    version (``<dwc_dir>/<tier>/w<version>.safetensors``) instead of once per device.
    """
    if version == 0:
        return {k: v.clone() for k, v in initial.items()}
    from safetensors.torch import load_file

    return load_file(f"{cfg['dwc_dir']}/{cfg['tier']}/w{version}.safetensors")


def apply_downlink(cfg: dict, initial: dict, downlink: dict | None) -> tuple[dict, int, str]:
    """``(weights, version, rejection reason or "")`` after applying this round's downlink.

    ``downlink`` is ``{"full": arrays}`` (a dense refresh to ``target_version``) or ``{"chain":
    {"payloads": [payload, ...]}}`` (the DWC payloads taking ``held_version`` to ``target_version``, each
    ``bytes`` or a 1-D uint8 array, applied in order). A malformed downlink, or weights the device cannot read, are
    rejected as a whole: the device keeps what it held (or its initial adapters) and says why.
    """
    from fl_sim import PayloadError, dwc

    u, v = int(cfg["held_version"]), int(cfg["target_version"])
    try:
        held = held_weights(cfg, initial, u)
    except Exception as exc:  # noqa: BLE001 - a missing or corrupt store file: fall back to the base adapters
        return {k: t.clone() for k, t in initial.items()}, 0, f"cannot read held version {u}: {exc}"
    if not downlink:
        return held, u, ""
    try:
        if "full" in downlink:
            full = {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in downlink["full"].items()}
            if set(full) != set(held) or any(full[k].shape != held[k].shape for k in held):
                raise PayloadError("full refresh does not match the adapter's tensors")
            if any(not torch.isfinite(t).all() for t in full.values()):
                raise PayloadError("full refresh contains NaN or inf")
            return full, v, ""
        chain = downlink["chain"]
        if set(chain) != {"payloads"} or not isinstance(chain["payloads"], list):
            raise PayloadError(f"payload chain has {sorted(chain)}, expected a list 'payloads'")
        if len(chain["payloads"]) != v - u:
            raise PayloadError(f"{len(chain['payloads'])} payloads for versions {u}->{v}")
        w = held
        for p in chain["payloads"]:
            if isinstance(p, np.ndarray) and p.dtype == np.uint8 and p.ndim == 1:
                p = p.tobytes()
            w = dwc.apply(w, dwc.decode(p, w))
        return w, v, ""
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with a downlink, reject it, never crash
        return held, u, str(exc) if isinstance(exc, (PayloadError, ValueError)) else f"{type(exc).__name__}: {exc}"


def run_cdcca_round(cfg: dict, downlink: dict | None) -> tuple[dict, dict, str]:
    """One CD-CCA device round: apply the downlink, answer the stream, upload what UTS selects.

    Returns ``(upload arrays, metrics, downlink rejection reason or "")``. The device does not train:
    adaptation happens in the cloud.
    """
    from fl_sim import uts
    from fl_sim.models.mllm import _llava, answer_with_stats, visual_tokens

    rng = device_rng(cfg["seed"], cfg["device_id"], cfg["round"], 2)
    if cfg.get("crash_prob", 0.0) > 0 and rng.random() < cfg["crash_prob"]:
        raise DeviceCrash(f"device {cfg['device_id']} crashed in round {cfg['round']} (simulated)")
    model, initial = adapted(cfg)
    if downlink and cfg.get("corrupt_downlink_prob", 0.0) > 0:  # its own stream: the device's draws stay the same
        link_rng = device_rng(cfg["seed"], cfg["device_id"], cfg["round"], 3)
        if link_rng.random() < cfg["corrupt_downlink_prob"]:
            downlink = corrupt_downlink(downlink, link_rng)
    weights, version, rejected = apply_downlink(cfg, initial, downlink)
    load_adapter_state(model, weights)
    pr = runtime.prompter(cfg["cache_dir"] or None)
    data = draw_samples(cfg)
    vis = visual_tokens(model, pr.pixels(data["image"]))
    preds, stats = answer_with_stats(model, pr, vis, data["question"], max_new_tokens=28)
    vqa = data["family"] != "caption"
    online_acc = (float(np.mean([p == a for p, a in zip(np.asarray(preds)[vqa], data["answer"][vqa])]))
                  if vqa.any() else float("nan"))
    # stage 1: which samples
    kept = uts.stage1(stats, data["question"], cfg["uts_method"], cfg["uts_budget"], rng,
                      cfg.get("uts_normalize", False), cfg.get("uts_stratify", False), cfg.get("uts_power"),
                      cfg.get("uts_min_uncertainty"))
    questions = [pr.words(str(data["question"][i])) for i in kept]
    if cfg["uts_upload"] == "images":
        upload = uts.encode_upload(questions, images=np.asarray(data["image"])[kept])
    else:
        # stage 2: which visual tokens of those samples
        v = vis[torch.as_tensor(kept, dtype=torch.long)]
        if cfg["uts_tokens"] == "off" or len(kept) == 0:
            mask = torch.ones(v.shape[:2], dtype=torch.bool)
        else:
            if cfg["uts_tokens"] == "mc_dropout":
                g = torch.Generator().manual_seed(int(rng.integers(2**31)))
                scores = uts.token_uncertainty_mc(_llava(model).model.multi_modal_projector, v,
                                                  cfg["uts_mc_passes"], cfg["uts_mc_p"], g)
            else:
                scores = uts.token_uncertainty_novelty(v, runtime.reference_token(cfg["model_path"],
                                                                                  cfg["cache_dir"] or None))
            mask = uts.select_tokens(scores, cfg["uts_keep_tokens"])
        upload = uts.encode_upload(questions, vis=v, mask=mask, token_bits=cfg["uts_token_bits"])
    if cfg.get("corrupt_prob", 0.0) > 0 and rng.random() < cfg["corrupt_prob"]:
        upload = corrupt(upload, rng)
    metrics = {"n_infer": len(preds), "n_train": 0, "online_acc": online_acc, "loss": float("nan"),
               "uploaded": len(kept), "version": version, "downlink_rejected": int(bool(rejected))}
    return upload, metrics, rejected


def corrupt(upload: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fault injection (``fleet.corrupt_prob``): a truncated, NaN-poisoned, mis-shaped upload, or one whose
    first question is too long for the cloud's sequences."""
    out = dict(upload)
    key = next(k for k in ("images", "tokens_2bit", "tokens") if k in out)
    kind = int(rng.integers(4))
    if kind == 0:
        out[key] = out[key].reshape(-1)[:-1]
    elif kind == 1 and "scales" in out and out["scales"].size:
        out["scales"] = out["scales"].copy()
        out["scales"][0] = np.nan
    elif kind == 1 and key == "tokens" and out[key].dtype == np.float16 and out[key].size:
        out[key] = out[key].copy()
        out[key].reshape(-1)[0] = np.nan
    elif kind == 3 and out["q_len"].size and out["q_len"][0] > 0:
        n0 = int(out["q_len"][0])  # a valid upload but for its length: the first question's first word, 200 times
        out["questions"] = np.concatenate([np.repeat(out["questions"][:1], 200), out["questions"][n0:]])
        out["q_len"] = out["q_len"].copy()
        out["q_len"][0] = 200
    else:
        out["q_len"] = np.concatenate([out["q_len"], np.asarray([3], np.uint8)])
    return out


def corrupt_downlink(downlink: dict, rng: np.random.Generator) -> dict:
    """Fault injection (``fleet.corrupt_downlink_prob``): a downlink damaged in transit. A payload chain
    loses the last byte of a random payload; a dense refresh gets a NaN."""
    if "full" in downlink:
        full = {k: np.array(a, dtype=np.float32) for k, a in downlink["full"].items()}
        first = next(iter(full))
        full[first].reshape(-1)[0] = np.nan
        return {"full": full}
    payloads = list(downlink["chain"]["payloads"])
    if not payloads:
        return downlink
    i = int(rng.integers(len(payloads)))
    p = payloads[i]
    payloads[i] = (p.tobytes() if isinstance(p, np.ndarray) else bytes(p))[:-1]
    return {"chain": {"payloads": payloads}}
