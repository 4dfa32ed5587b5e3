"""Server checkpoints: tensors as safetensors, everything else as JSON, one folder per round.

A round's folder is complete once its ``state.json`` exists (written last, atomically); resume takes
the newest complete folder. Older folders are pruned, keeping ``keep``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _rounds(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoint"
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("round-*") if (p / "state.json").is_file()), key=lambda p: int(p.name[6:]))


def save_checkpoint(run_dir: Path, server_round: int, state: dict, tensors: dict[str, dict[str, torch.Tensor]],
                    keep: int = 2) -> Path:
    """``tensors`` maps a group (e.g. a tier name) to a flat state dict; ``state`` must be JSON-able."""
    folder = Path(run_dir) / "checkpoint" / f"round-{server_round:05d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for group, sd in tensors.items():
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / f"{group}.safetensors"))
    tmp = folder / ".state.json.tmp"
    tmp.write_text(json.dumps(state | {"round": server_round, "groups": sorted(tensors)}, indent=1, sort_keys=True))
    os.replace(tmp, folder / "state.json")
    for old in _rounds(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(run_dir: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]] | None:
    """The newest complete checkpoint as ``(state, tensors)``, or ``None``."""
    done = _rounds(run_dir)
    if not done:
        return None
    folder = done[-1]
    state = json.loads((folder / "state.json").read_text())
    return state, {g: load_file(str(folder / f"{g}.safetensors")) for g in state.get("groups", [])}
