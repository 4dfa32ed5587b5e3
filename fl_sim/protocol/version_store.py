"""CD-CCA's DWC versions of each tier: written by the cloud, read by the devices.

Layout under ``root`` (one folder per tier)::

    <tier>/p<v>.safetensors   the payload taking version v - 1 to v (one uint8 array "payload")
    <tier>/w<v>.safetensors   the adapter weights a device at version v holds

Every device of a tier at one version holds the same weights, so they are stored once per version
instead of once per device. Version 0 is the tier's initial adapters and is not stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file, save_file


class VersionStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def put(self, tier: str, version: int, payload: bytes, held: dict[str, torch.Tensor]) -> None:
        """Store version ``version`` of ``tier``: the payload that makes it and the weights it holds."""
        folder = self.root / tier
        folder.mkdir(parents=True, exist_ok=True)
        save_np({"payload": np.frombuffer(payload, np.uint8)}, str(folder / f"p{version}.safetensors"))
        save_file({k: t.contiguous() for k, t in held.items()}, str(folder / f"w{version}.safetensors"))

    def payload(self, tier: str, version: int) -> bytes:
        return load_np(str(self.root / tier / f"p{version}.safetensors"))["payload"].tobytes()

    def chain(self, tier: str, held: int, target: int) -> list[bytes]:
        """The payloads taking a device from version ``held`` to ``target``, in order."""
        return [self.payload(tier, v) for v in range(held + 1, target + 1)]

    def held(self, tier: str, version: int) -> dict[str, torch.Tensor]:
        """The weights a device at ``version`` (>= 1) holds."""
        return load_file(str(self.root / tier / f"w{version}.safetensors"))
