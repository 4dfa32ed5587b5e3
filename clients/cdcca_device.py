"""cdcca_device: a CD-CCA device round. Apply the DWC downlink, answer the stream, upload what UTS picks.

The device does not train: adaptation happens in the cloud. The server's message holds the task
(``CDCCADeviceSettings``: the version the device holds, the version it is sent, the UTS settings) and
the downlink: ``dwc_chain`` in the task record (the DWC payloads taking ``held_version`` to
``target_version``, each ``bytes``, applied in order) or the ArrayRecord ``dwc_full`` (a dense refresh).
The reply holds ``"metrics"`` (plus ``uploaded``, ``version``, ``downlink_rejected``), ``"upload"`` (a
ConfigRecord with the UTS upload's arrays packed into one ``bytes`` value, ``fl_sim.protocol.records.packed_record``)
and, when the downlink was rejected, ``"status"`` with the reason.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from clients.behaviour import ANSWER_TOKENS, DeviceBehaviour, DeviceRound, online_accuracy
from clients.faults import corrupt, corrupt_downlink
from fl_sim import PayloadError
from fl_sim.device import model_cache
from fl_sim.mechanisms import dwc, uts
from fl_sim.mechanisms.uts import UTSConfig
from fl_sim.models import placement
from fl_sim.models.adapters import load_adapter_state
from fl_sim.models.families import family_of
from fl_sim.models.mllm import answer_with_stats, visual_tokens
from fl_sim.protocol.version_store import VersionStore


class CDCCADeviceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    held_version: int = Field(ge=0, description="the DWC version the server believes the device holds")
    target_version: int = Field(ge=0, description="the version the downlink takes it to")
    uts: UTSConfig


def held_weights(dev: DeviceRound, initial: dict[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
    """The adapter weights a device at ``version`` holds (version 0 = the tier's initial adapters)."""
    if version == 0:
        return {k: v.clone() for k, v in initial.items()}
    return VersionStore(dev.env.store_dir).held(dev.tier, version)


def apply_downlink(dev: DeviceRound, s: CDCCADeviceSettings, initial: dict, downlink: dict | None
                   ) -> tuple[dict, int, str]:
    """``(weights, version, rejection reason or "")`` after applying this round's downlink.

    ``downlink`` is ``{"full": arrays}`` (a dense refresh to ``target_version``) or ``{"chain":
    {"payloads": [payload, ...]}}`` (each ``bytes`` or a 1-D uint8 array). A malformed downlink, or weights
    the device cannot read, are rejected as a whole: the device keeps what it held (or its initial
    adapters) and says why.
    """
    u, v = s.held_version, s.target_version
    try:
        held = held_weights(dev, initial, u)
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


def run_cdcca_round(dev: DeviceRound, s: CDCCADeviceSettings, downlink: dict | None) -> tuple[dict, dict, str]:
    """``(upload arrays, metrics, downlink rejection reason or "")`` of one CD-CCA device round."""
    u = s.uts
    rng = dev.rng(2)
    dev.crash(rng)
    model, initial = dev.model()
    if downlink and dev.env.corrupt_downlink_prob > 0:  # its own stream: the device's draws stay the same
        link_rng = dev.rng(3)
        if link_rng.random() < dev.env.corrupt_downlink_prob:
            downlink = corrupt_downlink(downlink, link_rng)
    weights, version, rejected = apply_downlink(dev, s, initial, downlink)
    load_adapter_state(model, weights)
    pr = dev.prompter()
    data = dev.samples()
    vis = visual_tokens(model, pr.pixels(data["image"]))
    preds, stats = answer_with_stats(model, pr, vis, data["question"], max_new_tokens=ANSWER_TOKENS)
    # stage 1: which samples
    kept = uts.stage1(stats, data["question"], u.method, u.budget, rng, u.normalize, u.stratify, u.power,
                      u.min_uncertainty)
    questions = [pr.words(str(data["question"][i])) for i in kept]
    if u.upload == "images":
        upload = uts.encode_upload(questions, images=np.asarray(data["image"])[kept])
    else:
        # stage 2: which visual tokens of those samples
        v = vis[torch.as_tensor(kept, dtype=torch.long)]
        mask = kept_tokens(dev, model, v, u, rng)
        if u.upload == "regions":  # the teacher reads images: the pixels those tokens encode go up
            images = np.asarray(data["image"])[kept]
            pixels = uts.region_mask(mask, family_of(model).token_boxes(model, v.shape[1]), *images.shape[1:3])
            upload = uts.encode_upload(questions, images=images, pixel_mask=pixels)
        else:
            upload = uts.encode_upload(questions, vis=v, mask=mask, token_bits=u.token_bits)
    if dev.env.corrupt_prob > 0 and rng.random() < dev.env.corrupt_prob:
        upload = corrupt(upload, rng)
    metrics = {"n_infer": len(preds), "n_train": 0, "online_acc": online_accuracy(preds, data), "loss": float("nan"),
               "uploaded": len(kept), "version": version, "downlink_rejected": int(bool(rejected))}
    return upload, metrics, rejected


def kept_tokens(dev, model, v: torch.Tensor, u, rng) -> torch.Tensor:
    """UTS stage 2: ``(B, N)`` bool, the visual tokens of the kept samples ``v`` that go up."""
    if u.tokens == "off" or len(v) == 0:
        return torch.ones(v.shape[:2], dtype=torch.bool)
    if u.tokens == "mc_dropout":
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        fam = family_of(model)
        connector = fam.connector_module(model)
        scores = uts.token_uncertainty_mc(lambda x: fam.image_embeds(model, placement.to_model(connector, x)),
                                          v, u.mc_passes, u.mc_p, g, fam.token_groups(model, v.shape[1]))
    else:
        scores = uts.token_uncertainty_novelty(v, model_cache.reference_token(dev.model_path, dev.env.cache_dir))
    return uts.select_tokens(scores, u.keep_tokens)


class CDCCADevice(DeviceBehaviour):
    Settings = CDCCADeviceSettings

    @classmethod
    def run(cls, dev, settings, content):
        from flwr.app import ConfigRecord, MetricRecord

        from fl_sim.protocol.device_task import read_task
        from fl_sim.protocol.records import packed_record, record_values

        _, values = read_task(content)
        downlink = None  # raw values; apply_downlink validates them (a bad downlink is rejected, not fatal)
        if "dwc_full" in content:
            downlink = {"full": record_values(content["dwc_full"])}
        elif "dwc_chain" in values:
            downlink = {"chain": {"payloads": values["dwc_chain"]}}
        upload, metrics, reason = run_cdcca_round(dev, settings, downlink)
        reply = {"metrics": MetricRecord({k: float(v) for k, v in metrics.items()}), "upload": packed_record(upload)}
        if reason:
            reply["status"] = ConfigRecord({"downlink_error": reason})
        return reply

    @classmethod
    def warm_up(cls, dev):
        model_cache.reference_token(dev.model_path, dev.env.cache_dir)
