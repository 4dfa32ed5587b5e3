"""Datasets on disk as domains: ``[domains.NAME]`` in an experiment makes a VQA dataset a domain like the
built-in ones (schedules, partitions, UTS, AKD, evaluation).

The layouts read, and what keeps a dataset inside its folder: ``fl_sim.world.user_sources``. Each row becomes
a sample of the built-in world's shape: the image converted faithfully to RGB (``fl_sim.world.user_images``)
and resized to the vision tower's square input (bilinear), the question and answer as text (numbers written
as digits, other values refused; no reserved token; an answer that normalises to something; within the
models' lengths), the question type (the ``question_type`` column, else ``"vqa"``) as its family. Rows are
counted from 1 in every message. A dataset without the configured test split is split by image: the
distinct images (by their converted pixels) are permuted with a seed made from the domain's name alone and
``test_fraction`` of them go to test, with every question about them, so no image is on both sides and every
run of every seed tests on the same images. The converted splits are cached (``data/user-NAME-KEY``), keyed
by the dataset folder's content and the domain's settings.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zlib
from pathlib import Path

import numpy as np

from fl_sim import FlSimError, one_line
from fl_sim.world import user_sources
from fl_sim.world.answers import ANSWER_TOKENS, normalise
from fl_sim.world.domains import DOMAINS
from fl_sim.world.tokenizer import SPECIALS
from fl_sim.world.user_images import ImageError, to_rgb
from fl_sim.world.user_sources import inside

log = logging.getLogger(__name__)

VERSION = 2
TYPE_DEFAULT = "vqa"
MAX_QUESTION_WORDS = 64  # a question's words, within the prompt positions beside an answer (models.prompts)


_BUILT: dict = {}  # (name, settings, cell_px, cache) -> its cache folder, once per process


def check_names(names) -> None:
    for name in names:
        if name in DOMAINS or "+" in name:
            raise FlSimError(f"domains.{name}: the name is taken by a built-in domain or looks like a combination "
                             "(A+B); give the dataset another name")


def _text(at: str, what: str, value, converted: list) -> str:
    """A question's or answer's cell as text: strings as they are, numbers as digits (noted in
    ``converted``), anything else refused."""
    if isinstance(value, bool) or isinstance(value, (list, tuple, dict)):
        kind = "a boolean" if isinstance(value, bool) else f"a {type(value).__name__}"
        raise FlSimError(f"{at}: the {what} is {kind} ({str(value)[:40]}); give one {what} per row, as text")
    if isinstance(value, (int, float, np.integer, np.floating)):
        if not math.isfinite(value):
            raise FlSimError(f"{at}: the {what} is {value}")
        text = str(int(value)) if float(value).is_integer() else repr(float(value))
        converted.append(f"{value!r} -> {text!r}")
        value = text
    text = " ".join(str(value if value is not None else "").split())
    if not text:
        raise FlSimError(f"{at}: the {what} is empty")
    special = next((t for t in SPECIALS if t in text), None)
    if special:
        raise FlSimError(f"{at}: the {what} holds {special!r}, a token the models reserve")
    limit = MAX_QUESTION_WORDS if what == "question" else ANSWER_TOKENS - 1
    if len(text.split()) > limit:
        raise FlSimError(f"{at}: the {what} has {len(text.split())} words; at most {limit} fit the models' "
                         f"{'prompt' if what == 'question' else 'answers'}")
    if what == "answer" and not normalise(text):
        raise FlSimError(f"{at}: the answer {text!r} normalises to nothing (articles and punctuation only), so "
                         "any prediction would match it")
    return text


def _rows(name: str, split: str, ds, spec, side: int, root: Path) -> dict:
    where = f"domains.{name} ({spec.path}) split {split!r}"
    cols = [spec.image, spec.question, spec.answer] + ([spec.question_type] if spec.question_type else [])
    missing = [c for c in cols if c not in ds.column_names]
    if missing:
        raise FlSimError(f"{where}: no column {missing[0]!r}; it has {', '.join(ds.column_names)}")
    if len(ds) == 0:
        raise FlSimError(f"{where}: the split is empty")
    from datasets import Image
    from PIL import Image as PILImage

    if isinstance(ds.features[spec.image], Image):  # decode here, row by row, so a bad image is named
        ds = ds.cast_column(spec.image, Image(decode=False))
    images, questions, answers, types, converted = [], [], [], [], []
    for i, row in enumerate(ds, start=1):
        at = f"{where} row {i}"
        try:
            images.append(to_rgb(row[spec.image], side, lambda p, at=at: PILImage.open(inside(root, p, at))))
        except FlSimError:
            raise
        except ImageError as exc:
            raise FlSimError(f"{at}: the image is refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - an image that does not decode: name it
            cell = row[spec.image]
            named = cell.get("path") if isinstance(cell, dict) else cell if isinstance(cell, str) else None
            raise FlSimError(f"{at}: the image{f' {named!r}' if named else ''} does not decode "
                             f"({one_line(exc)})") from None
        questions.append(_text(at, "question", row[spec.question], converted))
        answers.append(_text(at, "answer", row[spec.answer], converted))
        types.append(str(row[spec.question_type]) if spec.question_type else TYPE_DEFAULT)
    if converted:
        log.warning("%s: %d numbers converted to text (%s)", where, len(converted), ", ".join(converted[:3]))
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
    path = Path(spec.path).expanduser()
    where = f"domains.{name} ({path})"
    if not path.exists():
        raise FlSimError(f"{where}: no such file or directory")
    root = user_sources.root_of(path)
    user_sources.check_tree(where, root)
    key = stable_hash({"v": VERSION, "source": user_sources.content_hash(root), "name": name, "cell_px": cell_px,
                       "spec": spec.model_dump(exclude={"path"})})
    out = cache_root(cache_dir) / "data" / f"user-{name}-{key}"

    def make(tmp: Path) -> dict:
        side = 3 * cell_px
        dd = user_sources.read(where, path, spec.format, cache_root(cache_dir) / "hf")
        if spec.test_split in dd:
            train_name = next((s for s in ("train", *dd) if s in dd and s != spec.test_split), None)
            if train_name is None:
                raise FlSimError(f"domains.{name} ({spec.path}): only the test split {spec.test_split!r}, "
                                 "no train split")
            parts = {"train": _rows(name, train_name, dd[train_name], spec, side, root),
                     "test": _rows(name, spec.test_split, dd[spec.test_split], spec, side, root)}
        else:
            src = "train" if "train" in dd else next(iter(dd))
            rows = _rows(name, src, dd[src], spec, side, root)
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
        return {"domain": name, "source": str(path.resolve()), "rows": counts, "words": words,
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

