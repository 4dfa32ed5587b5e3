"""One cache directory for everything fl-sim builds: datasets, tokenizer, pretrained models.

Entries are folders keyed by a hash of what produced them, written atomically (build in a temporary
folder, then rename) and sealed by a ``MANIFEST.json`` listing every file with its size and SHA-256.
An entry whose manifest is missing or whose files do not match is treated as absent and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
ENV_VAR = "FL_SIM_CACHE"


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """Cache root: ``override``, else ``$FL_SIM_CACHE``, else ``~/.cache/fl-sim``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fl-sim"


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of a JSON-serialisable object (keys sorted), used as a cache key."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, f".{MANIFEST}.tmp"))


def seal(folder: Path, meta: dict | None = None) -> None:
    """Write the manifest (file sizes and hashes plus ``meta``) into ``folder``."""
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": files, "meta": meta or {}}, indent=1, sort_keys=True))
    os.replace(tmp, folder / MANIFEST)  # a reader sees the old manifest or the new one, never half of one


def verify(folder: Path) -> str | None:
    """Return ``None`` if ``folder`` is a complete, intact entry, else the reason it is not."""
    mpath = folder / MANIFEST
    if not mpath.is_file():
        return "no manifest (partial write?)"
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as exc:
        return f"unreadable manifest ({exc})"
    for rel, info in files.items():
        p = folder / rel
        if not p.is_file():
            return f"missing file {rel}"
        if p.stat().st_size != info["bytes"] or _sha256(p) != info["sha256"]:
            return f"corrupt file {rel}"
    return None


def read_meta(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text()).get("meta", {})


def get_or_build(folder: Path, build: Callable[[Path], dict | None], what: str = "entry") -> Path:
    """Return ``folder`` if it holds an intact entry; otherwise build it atomically.

    ``build(tmpdir)`` writes the entry's files into ``tmpdir`` and may return metadata for the manifest.
    """
    folder = Path(folder)
    if folder.exists():
        reason = verify(folder)
        if reason is None:
            return folder
        log.warning("cache %s at %s is unusable (%s): rebuilding", what, folder, reason)
        shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        meta = build(tmp)
        seal(tmp, meta)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race: keep theirs if intact
            if verify(folder) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def extend(folder: Path, add: Callable[[Path], None]) -> None:
    """Add files to the intact entry ``folder``: ``add(folder)`` writes them, then the manifest is resealed
    over them with the same metadata (an entry cached before a file was part of it gets it this way)."""
    meta = read_meta(folder)
    add(folder)
    seal(folder, meta)
