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


def _readable(where: str, ds, spec):
    """``ds`` (one split of the source) checked to have the configured columns and a row, its images left
    undecoded (each is decoded by ``_samples``, so a bad one is named)."""
    cols = [spec.image, spec.question, spec.answer] + ([spec.question_type] if spec.question_type else [])
    missing = [c for c in cols if c not in ds.column_names]
    if missing:
        raise FlSimError(f"{where}: no column {missing[0]!r}; it has {', '.join(ds.column_names)}")
    if len(ds) == 0:
        raise FlSimError(f"{where}: the split is empty")
    from datasets import Image

    if isinstance(ds.features[spec.image], Image):
        ds = ds.cast_column(spec.image, Image(decode=False))
    return ds


def _the_image(cell, root: Path) -> str:
    """``the image 'PATH'`` (relative to the dataset's folder) for a row's image cell, when it names a file."""
    named = cell.get("path") if isinstance(cell, dict) else cell if isinstance(cell, str) else None
    if not named:
        return "the image"
    full = Path(named).resolve()
    return f"the image {str(full.relative_to(root.resolve()) if full.is_relative_to(root.resolve()) else named)!r}"


def _samples(name: str, where: str, ds, spec, side: int, root: Path, grouped: bool):
    """The rows of ``ds`` one at a time as samples of domain ``name`` (with ``grouped``, each with the
    digest of its converted pixels as ``group``: the held-out split keeps an image's rows together)."""
    from PIL import Image as PILImage

    converted = []
    for i, row in enumerate(ds, start=1):
        at, cell = f"{where} row {i}", row[spec.image]
        try:
            image = to_rgb(cell, side, lambda p, at=at: PILImage.open(inside(root, p, at)))
        except FlSimError:
            raise
        except ImageError as exc:
            raise FlSimError(f"{at}: {_the_image(cell, root)} is refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - an image that does not decode: name it
            raise FlSimError(f"{at}: {_the_image(cell, root)} does not decode ({one_line(exc)})") from None
        sample = {"image": image, "question": _text(at, "question", row[spec.question], converted),
                  "answer": _text(at, "answer", row[spec.answer], converted),
                  "family": str(row[spec.question_type]) if spec.question_type else TYPE_DEFAULT,
                  "domain": name, "caption": ""}
        if grouped:
            sample["group"] = hashlib.sha1(image.tobytes()).hexdigest()
        yield sample
    if converted:
        log.warning("%s: %d numbers converted to text (%s)", where, len(converted), ", ".join(converted[:3]))


def _write(where: str, rows, features, scratch: Path):
    """The samples ``rows`` (a generator's arguments) written to Arrow in batches as they come
    (``Dataset.from_generator``): the conversion holds a batch of samples, whatever the dataset's size."""
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    try:
        return Dataset.from_generator(_samples, features=features, gen_kwargs=rows, cache_dir=str(scratch),
                                      keep_in_memory=False)
    except DatasetGenerationError as exc:  # the generator's own one-line error, unwrapped
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, FlSimError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise FlSimError(f"{where}: the rows do not convert ({one_line(exc)})") from None


def _held_out(name: str, groups: list[str], fraction: float) -> np.ndarray:
    """Boolean test mask: ``fraction`` of the distinct images (``groups``: one digest per row; all their
    rows), seeded by ``name``."""
    distinct = list(dict.fromkeys(groups))
    rng = np.random.default_rng([VERSION, zlib.crc32(name.encode())])
    order = rng.permutation(len(distinct))
    n_test = min(len(distinct) - 1, max(1, math.ceil(fraction * len(distinct))))
    test = {distinct[i] for i in order[:n_test]}
    return np.array([g in test for g in groups])


def _check_disk(where: str, rows: int, folder: Path) -> None:
    """The converted rows (and, while a held-out split is cut, a second copy) fit the cache's disk."""
    from fl_sim.app.capacity import DISK_PER_SAMPLE_BYTES, free_disk
    from fl_sim.report.table import human_bytes

    need, free = 2 * rows * DISK_PER_SAMPLE_BYTES, free_disk(folder)
    if need > free:
        raise FlSimError(f"{where}: converting its {rows} rows needs about {human_bytes(need, binary=True)} of "
                         f"disk under {folder}, which has {human_bytes(free, binary=True)} free")


def build(name: str, spec, cell_px: int, cache_dir: str | None) -> Path:
    """Convert (once, cached) the dataset of domain ``name``; returns its cache folder (``train``, ``test``).
    Every problem with the data is a one-line ``FlSimError`` naming the dataset, raised before anything is
    written to the cache. The rows stream through: decoded, checked and written to Arrow in batches."""
    import tempfile

    from datasets import Value

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
        side, features = 3 * cell_px, split_features(cell_px)
        dd = user_sources.read(where, path, spec.format, cache_root(cache_dir) / "hf")
        at = {s: f"domains.{name} ({spec.path}) split {s!r}" for s in dd}
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f".{tmp.name}-gen.") as scratch:
            def rows(split: str, grouped: bool) -> dict:
                return {"name": name, "where": at[split], "ds": _readable(at[split], dd[split], spec),
                        "spec": spec, "side": side, "root": root, "grouped": grouped}

            _check_disk(where, sum(len(dd[s]) for s in dd), tmp.parent)
            if spec.test_split in dd:
                train_name = next((s for s in ("train", *dd) if s in dd and s != spec.test_split), None)
                if train_name is None:
                    raise FlSimError(f"domains.{name} ({spec.path}): only the test split {spec.test_split!r}, "
                                     "no train split")
                parts = {"train": _write(where, rows(train_name, False), features, Path(scratch)),
                         "test": _write(where, rows(spec.test_split, False), features, Path(scratch))}
            else:
                src = "train" if "train" in dd else next(iter(dd))
                grouped = features.copy()
                grouped["group"] = Value("string")
                both = _write(where, rows(src, True), grouped, Path(scratch))
                groups = both["group"]
                if len(set(groups)) < 2:
                    raise FlSimError(f"domains.{name} ({spec.path}): one distinct image; a held-out test split "
                                     "needs two")
                test = _held_out(name, groups, spec.test_fraction)
                both = both.remove_columns("group")
                parts = {s: both.select(np.flatnonzero(test == (s == "test"))) for s in ("train", "test")}
            counts, words, types = {}, set(), set()
            for s, ds in parts.items():
                ds.save_to_disk(str(tmp / s))  # select()ed rows are written out in batches
                counts[s] = len(ds)
                for batch in ds.select_columns(["question", "answer", "family"]).iter(batch_size=10_000):
                    words.update(w for t in batch["question"] + batch["answer"] for w in t.split())
                    types.update(batch["family"])
        return {"domain": name, "source": str(path.resolve()), "rows": counts, "words": sorted(words),
                "types": sorted(types)}

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

