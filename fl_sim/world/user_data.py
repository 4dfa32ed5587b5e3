"""Datasets on disk as domains: ``[domains.NAME]`` in an experiment makes a VQA dataset a domain like the
built-in ones (schedules, partitions, UTS, AKD, evaluation).

Two formats, found from the folder:

- a folder written by ``datasets.Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``;
- an image folder with ``metadata.jsonl`` or ``metadata.csv`` (Hugging Face's ``imagefolder``: a
  ``file_name`` column plus the others; a file may appear on several rows, one question each).

Each row becomes a sample of the built-in world's shape: the image converted to RGB and resized to the
vision tower's square input (bilinear), the question and answer as given, the question type (the
``question_type`` column, else ``"vqa"``) as its family. A dataset without the configured test split is
split by image: the distinct images (by their converted pixels) are permuted with a seed made from the
domain's name alone and ``test_fraction`` of them go to test, with every question about them, so no image is
on both sides and every run of every seed tests on the same images. The converted splits are cached
(``data/user-NAME-KEY``), keyed by the source folder's content and the domain's settings.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from pathlib import Path

import numpy as np

from fl_sim import FlSimError
from fl_sim.world.domains import DOMAINS

VERSION = 1
TYPE_DEFAULT = "vqa"


_BUILT: dict = {}  # (name, settings, cell_px, cache) -> its cache folder, once per process


def check_names(names) -> None:
    for name in names:
        if name in DOMAINS or "+" in name:
            raise FlSimError(f"domains.{name}: the name is taken by a built-in domain or looks like a combination "
                             "(A+B); give the dataset another name")


def _source_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _read(name: str, spec, cache_dir: str | None):
    """The source as a ``DatasetDict`` (no conversion yet)."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    folder = Path(spec.path).expanduser()
    where = f"domains.{name} ({folder})"
    if not folder.is_dir():
        raise FlSimError(f"{where}: no such directory")
    if (folder / "metadata.jsonl").is_file() or (folder / "metadata.csv").is_file():
        from fl_sim.cache import cache_root

        meta = folder / ("metadata.jsonl" if (folder / "metadata.jsonl").is_file() else "metadata.csv")
        lines = [ln for ln in meta.read_text(errors="replace").splitlines() if ln.strip()]
        if len(lines) <= (meta.suffix == ".csv"):
            raise FlSimError(f"{where}: {meta.name} has no rows: the split is empty")

        try:
            ds = load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(cache_root(cache_dir) / "hf"))
        except Exception as exc:  # noqa: BLE001 - whatever the builder says, one line naming the dataset
            raise FlSimError(f"{where}: the image folder does not load: {str(exc).splitlines()[0]}") from None
    elif (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file():
        try:
            ds = load_from_disk(str(folder))
        except Exception as exc:  # noqa: BLE001
            raise FlSimError(f"{where}: the saved dataset does not load: {str(exc).splitlines()[0]}") from None
    else:
        raise FlSimError(f"{where}: neither a save_to_disk folder (dataset_info.json / dataset_dict.json) nor an "
                         "image folder with metadata.jsonl or metadata.csv")
    return DatasetDict({"train": ds}) if isinstance(ds, Dataset) else ds


def _pixels(value, side: int) -> np.ndarray:
    """``(side, side, 3)`` uint8 RGB from a PIL image, encoded bytes, a path or an array of any size and mode."""
    import io

    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        value = Image.open(io.BytesIO(value))
    elif isinstance(value, str):
        value = Image.open(value)
    elif not isinstance(value, Image.Image):
        arr = np.asarray(value)
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255 if arr.max() <= 1 else 1), 0, 255).astype(np.uint8)
        value = Image.fromarray(arr)
    return np.asarray(value.convert("RGB").resize((side, side), Image.BILINEAR), dtype=np.uint8)


def _rows(name: str, split: str, ds, spec, side: int) -> dict:
    where = f"domains.{name} ({spec.path}) split {split!r}"
    cols = [spec.image, spec.question, spec.answer] + ([spec.question_type] if spec.question_type else [])
    missing = [c for c in cols if c not in ds.column_names]
    if missing:
        raise FlSimError(f"{where}: no column {missing[0]!r}; it has {', '.join(ds.column_names)}")
    if len(ds) == 0:
        raise FlSimError(f"{where}: the split is empty")
    from datasets import Image

    if isinstance(ds.features[spec.image], Image):  # decode here, row by row, so a bad image is named
        ds = ds.cast_column(spec.image, Image(decode=False))
    images, questions, answers, types = [], [], [], []
    for i, row in enumerate(ds):
        try:
            images.append(_pixels(row[spec.image], side))
        except Exception as exc:  # noqa: BLE001 - an image that does not decode: name it
            raise FlSimError(f"{where} row {i}: the image does not decode ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        q, a = str(row[spec.question] or "").strip(), str(row[spec.answer] or "").strip()
        if not q:
            raise FlSimError(f"{where} row {i}: the question is empty")
        if not a:
            raise FlSimError(f"{where} row {i}: the answer is empty")
        questions.append(" ".join(q.split()))
        answers.append(" ".join(a.split()))
        types.append(str(row[spec.question_type]) if spec.question_type else TYPE_DEFAULT)
    return {"image": images, "question": questions, "answer": answers, "family": types}


def _held_out(name: str, images: list[np.ndarray], fraction: float) -> np.ndarray:
    """Boolean test mask: ``fraction`` of the distinct images (and all their rows), seeded by ``name``."""
    keys = [hashlib.sha1(im.tobytes()).digest() for im in images]
    groups = list(dict.fromkeys(keys))
    rng = np.random.default_rng([VERSION, zlib.crc32(name.encode())])
    order = rng.permutation(len(groups))
    n_test = min(len(groups) - 1, max(1, math.ceil(fraction * len(groups))))
    test = {groups[i] for i in order[:n_test]}
    return np.array([k in test for k in keys])


def build(name: str, spec, cell_px: int, cache_dir: str | None) -> Path:
    """Convert (once, cached) the dataset of domain ``name``; returns its cache folder (``train``, ``test``).
    Every problem with the data is a one-line ``FlSimError`` naming the dataset, raised before anything is
    written to the cache."""
    from datasets import Dataset

    from fl_sim.cache import cache_root, get_or_build, stable_hash
    from fl_sim.world.features import split_features

    memo = (name, spec.model_dump_json(), cell_px, cache_dir)
    if memo in _BUILT:
        return _BUILT[memo]
    folder = Path(spec.path).expanduser()
    if not folder.is_dir():
        raise FlSimError(f"domains.{name} ({folder}): no such directory")
    key = stable_hash({"v": VERSION, "source": _source_hash(folder), "spec": spec.model_dump(exclude={"path"}),
                       "name": name, "cell_px": cell_px})
    out = cache_root(cache_dir) / "data" / f"user-{name}-{key}"

    def make(tmp: Path) -> dict:
        side = 3 * cell_px
        dd = _read(name, spec, cache_dir)
        if spec.test_split in dd:
            train_name = next((s for s in ("train", *dd) if s in dd and s != spec.test_split), None)
            if train_name is None:
                raise FlSimError(f"domains.{name} ({spec.path}): only the test split {spec.test_split!r}, "
                                 "no train split")
            parts = {"train": _rows(name, train_name, dd[train_name], spec, side),
                     "test": _rows(name, spec.test_split, dd[spec.test_split], spec, side)}
        else:
            src = "train" if "train" in dd else next(iter(dd))
            rows = _rows(name, src, dd[src], spec, side)
            if len(set(hashlib.sha1(im.tobytes()).digest() for im in rows["image"])) < 2:
                raise FlSimError(f"domains.{name} ({spec.path}): one distinct image; a held-out test split needs two")
            test = _held_out(name, rows["image"], spec.test_fraction)
            parts = {s: {k: [v for v, t in zip(vals, test) if t == (s == "test")] for k, vals in rows.items()}
                     for s in ("train", "test")}
        counts = {}
        for s, rows in parts.items():
            n = len(rows["question"])
            table = rows | {"domain": [name] * n, "caption": [""] * n}
            Dataset.from_dict(table, features=split_features(cell_px)).save_to_disk(str(tmp / s))
            counts[s] = n
        words = sorted({w for rows in parts.values() for t in rows["question"] + rows["answer"] for w in t.split()})
        return {"domain": name, "source": str(folder.resolve()), "rows": counts, "words": words,
                "types": sorted({t for rows in parts.values() for t in rows["family"]})}

    get_or_build(out, make, f"dataset of domain {name}")
    _BUILT[memo] = out
    return out



def load(name: str, spec, split: str, n: int, seed: int, cell_px: int, cache_dir: str | None):
    """``n`` samples (all when there are fewer) of user domain ``name``'s ``split``, a seeded choice of rows."""
    from datasets import load_from_disk

    folder = build(name, spec, cell_px, cache_dir)
    ds = load_from_disk(str(folder / split))  # memory-mapped, as the built-in splits (fl_sim.world.data)
    if n < len(ds):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), 0 if split == "train" else 1])
        ds = ds.select(np.sort(rng.choice(len(ds), size=n, replace=False)))
    return ds.with_format("numpy")

