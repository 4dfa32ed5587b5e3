"""Fault injection on CD-CCA links: malformed uploads (``fleet.corrupt_prob``) and downlinks damaged in
transit (``fleet.corrupt_downlink_prob``). The cloud and the devices must reject them, never crash."""

from __future__ import annotations

import numpy as np


def corrupt(upload: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A truncated, NaN-poisoned, mis-shaped upload, or one whose first question is too long for the
    cloud's sequences."""
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
    """A payload chain loses the last byte of a random payload; a dense refresh gets a NaN."""
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
