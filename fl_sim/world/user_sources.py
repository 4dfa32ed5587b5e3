"""Where a user dataset comes from: the layouts people keep VQA data in, read through ``datasets``' own
builders, and the rules that keep a dataset inside its folder.

``[domains.NAME] path`` is

- a folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``): ``load_from_disk``;
- any other folder: ``load_dataset(folder)``, whose builder and splits ``datasets`` infers from the files
  (an image folder with ``metadata.jsonl`` / ``metadata.csv``, at its top or in split sub-folders such as
  ``train/`` and ``test/``; parquet, JSON-lines or CSV files named by split), or the builder ``format`` names
  (``load_dataset(format, data_dir=folder)``: JSON-lines beside the images they name, say);
- a parquet, JSON-lines, JSON or CSV file: its builder, one ``train`` split.

Containment: every file under the dataset's folder is a regular file or a folder (a FIFO would block the
read, a device or socket is no data) and every symbolic link stays inside it; an image named by path
(a string column, or an image folder's ``file_name``) resolves inside the folder. The cache key hashes every
file of the folder, read in chunks, so nothing outside feeds a conversion and a changed file is a new key.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from fl_sim import FlSimError

FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
_CHUNK = 1 << 20


def root_of(path: Path) -> Path:
    """The folder a dataset's files must stay in: the folder itself, or a file's folder."""
    return path if path.is_dir() else path.parent


def check_tree(where: str, root: Path) -> None:
    """Refuse a folder with anything but regular files, folders and links that stay inside it."""
    top = root.resolve()
    for folder, dirs, files in os.walk(root, followlinks=False):
        for entry in dirs + files:
            p = Path(folder) / entry
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode):
                try:
                    target = p.resolve(strict=True)
                except (OSError, RuntimeError):
                    raise FlSimError(f"{where}: {p.relative_to(root)} is a broken or looping link") from None
                if not target.is_relative_to(top):
                    raise FlSimError(f"{where}: {p.relative_to(root)} links outside the dataset's folder "
                                     f"(to {target})")
                mode = target.stat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise FlSimError(f"{where}: {p.relative_to(root)} is not a regular file (a FIFO, socket or device)")


def content_hash(root: Path, only: Path | None = None) -> str:
    """SHA-256 (16 hex digits) of the relative names and contents of every file under ``root`` (or of the
    one file ``only``), read in chunks of 1 MiB."""
    h = hashlib.sha256()
    files = [only] if only is not None else sorted(p for p in root.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(root)).encode("utf-8", "surrogateescape") + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:16]


def inside(root: Path, name: str, where: str) -> Path:
    """The file an image path names (relative to ``root``, or absolute), refused unless it is a regular file
    inside ``root``."""
    p = Path(name)
    full = (p if p.is_absolute() else root / p).resolve()
    if not full.is_relative_to(root.resolve()):
        raise FlSimError(f"{where}: the image {name!r} is outside the dataset's folder")
    if not full.is_file():
        raise FlSimError(f"{where}: the image {name!r} is not a file in the dataset's folder")
    return full


def check_declared_files(where: str, root: Path) -> None:
    """Refuse files a folder's own metadata points ``datasets`` at outside it: ``configs`` in ``README.md`` /
    ``.huggingface.yaml`` (``data_files``, ``data_dir``), a saved dataset's ``state.json`` data files and its
    ``dataset_dict.json`` splits (each a folder name)."""
    import json

    import yaml

    named: list[str] = []
    for card in (root / "README.md", root / ".huggingface.yaml"):
        if card.is_file():
            text = card.read_text(errors="replace")
            if card.suffix == ".md":
                text = text.split("---")[1] if text.startswith("---") and text.count("---") >= 2 else ""
            try:
                meta = yaml.safe_load(text) or {}
            except yaml.YAMLError:
                meta = {}
            configs = meta.get("configs", []) if isinstance(meta, dict) else []
            for c in configs if isinstance(configs, list) else []:
                for key in ("data_dir", "data_files"):
                    named += _strings(c.get(key) if isinstance(c, dict) else None)
    for state in root.rglob("state.json"):
        try:
            named += [str(state.parent / f.get("filename", "")) for f in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    if (root / "dataset_dict.json").is_file():
        try:
            named += [str(root / s) for s in json.loads((root / "dataset_dict.json").read_text())["splits"]]
        except (ValueError, KeyError, TypeError):
            pass
    top = root.resolve()
    for name in named:
        p = Path(name)
        if not (p if p.is_absolute() else root / p).resolve().is_relative_to(top):
            raise FlSimError(f"{where}: its metadata names {name!r}, outside the dataset's folder")


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [x for v in value for x in _strings(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _strings(v)]
    return []


TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt")


def not_utf8(root: Path) -> str | None:
    """The first text file under ``root`` (metadata, JSON lines, CSV) that is not UTF-8, as ``NAME line N is
    not UTF-8 text``, read line by line; ``None`` when every one is."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES)
    for f in files:
        with open(f, "rb") as fh:
            for n, line in enumerate(fh, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    name = f.name if f == root else f.relative_to(root)
                    return f"{name} line {n} is not UTF-8 text (byte {exc.object[exc.start]:#x})"
    return None


def read(where: str, path: Path, fmt: str, hf_cache: Path):
    """The dataset at ``path`` as a ``DatasetDict`` (``fmt``: ``"auto"`` or a ``datasets`` builder name)."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    check_declared_files(where, root_of(path))

    def loading(what, fn):
        try:
            return fn()
        except FlSimError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the builder says, one line naming the dataset
            while exc.__cause__ is not None:  # what went wrong under datasets' "error while generating"
                exc = exc.__cause__
            if isinstance(exc, UnicodeDecodeError):
                bad = not_utf8(root_of(path))
                if bad:
                    raise FlSimError(f"{where}: {bad}; save it as UTF-8") from None
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            if "corresponds to no data" in first:
                raise FlSimError(f"{where}: the split is empty (its files hold no rows)") from None
            raise FlSimError(f"{where}: {what} does not load: {first}") from None

    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise FlSimError(f"{where}: a {path.suffix or 'suffix-less'} file; a dataset file is one of "
                             f"{', '.join(FILE_BUILDERS)} (or give a folder)")
        ds = loading(f"the {builder} file", lambda: load_dataset(builder, data_files={"train": str(path)},
                                                                 cache_dir=str(hf_cache)))
    elif any((path / m).is_file() for m in SAVED_MARKERS):
        ds = loading("the saved dataset", lambda: load_from_disk(str(path)))
    else:
        if not any(p.is_file() for p in path.rglob("*")):
            raise FlSimError(f"{where}: the folder holds no files")
        args = (str(path),) if fmt == "auto" else (fmt,)
        kw = {} if fmt == "auto" else {"data_dir": str(path)}
        ds = loading("the folder", lambda: load_dataset(*args, cache_dir=str(hf_cache), **kw))
    return DatasetDict({"train": ds}) if isinstance(ds, Dataset) else ds
