"""User datasets in the layouts people keep (``fl_sim.world.user_sources``), kept inside their folders, and
their images converted faithfully (``fl_sim.world.user_images``) or refused in one line."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fl_sim import FlSimError
from fl_sim.config import UserDomainConfig
from fl_sim.world import user_data
from fl_sim.world.catalog import DomainCatalog
from fl_sim.world.user_images import ImageError, to_rgb

FRUIT = ["apple", "banana", "cherry", "grape"]


def _png(path: Path, i: int, size=(12, 12)) -> None:
    rng = np.random.default_rng(i)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)


def _rows(n: int, image_key="file_name", prefix="") -> list[dict]:
    return [{image_key: f"{prefix}img{i}.png", "question": "which fruit?", "answer": FRUIT[i % 4]} for i in range(n)]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _images(folder: Path, n: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _png(folder / f"img{i}.png", start + i)


def _build(tmp_path, cache_dir, path, name="mine", **kw):
    spec = UserDomainConfig(path=str(path), **kw)
    return Path(user_data.build(name, spec, 16, cache_dir)), spec


def _listing(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_an_image_folder_with_split_subfolders(tmp_path, cache_dir):
    root = tmp_path / "splits"
    for split, n, start in (("train", 6, 0), ("test", 3, 100)):
        _images(root / split, n, start)
        _jsonl(root / split / "metadata.jsonl", _rows(n))
    before = _listing(root)
    out, _ = _build(tmp_path, cache_dir, root)
    from datasets import load_from_disk

    assert len(load_from_disk(str(out / "train"))) == 6 and len(load_from_disk(str(out / "test"))) == 3
    assert _listing(root) == before  # nothing written into the user's folder


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_a_file_of_rows_naming_images_beside_it(tmp_path, cache_dir, kind):
    root = tmp_path / kind
    _images(root / "pics", 6)
    rows = _rows(6, "image", "pics/")
    if kind == "jsonl":
        _jsonl(root / "data.jsonl", rows)
    else:
        import pandas as pd

        frame = pd.DataFrame(rows)
        frame.to_csv(root / "data.csv", index=False) if kind == "csv" else frame.to_parquet(root / "data.parquet")
    out, _ = _build(tmp_path, cache_dir, root / f"data.{kind}", test_fraction=0.34)
    from datasets import load_from_disk

    assert len(load_from_disk(str(out / "train"))) + len(load_from_disk(str(out / "test"))) == 6


def test_parquet_with_image_bytes_and_a_json_lines_folder(tmp_path, cache_dir):
    from datasets import Dataset
    from datasets import Image as HFImage

    root = tmp_path / "pq"
    root.mkdir()
    _images(tmp_path / "src", 4)
    pngs = [{"bytes": (tmp_path / "src" / f"img{i}.png").read_bytes(), "path": None} for i in range(4)]
    ds = Dataset.from_dict({"image": pngs, "question": ["what?"] * 4, "answer": FRUIT}).cast_column("image", HFImage())
    ds.to_parquet(str(root / "train.parquet"))  # the images' bytes inside the file
    out, _ = _build(tmp_path, cache_dir, root, name="pq")
    assert (out / "train").is_dir()
    jl = tmp_path / "jl"  # JSON-lines beside many images: the builder named, not inferred from the files
    _images(jl, 6)
    _jsonl(jl / "train.jsonl", _rows(6, "image"))
    out, _ = _build(tmp_path, cache_dir, jl, name="jl", format="json")
    assert (out / "test").is_dir()


def _refused(tmp_path, cache_dir, path, message, **kw):
    with pytest.raises(FlSimError, match=message) as e:
        DomainCatalog({"mine": UserDomainConfig(path=str(path), **kw)}, cache_dir).build_all()
    assert str(e.value).startswith("domains.mine (") and "\n" not in str(e.value), str(e.value)
    return str(e.value)


def test_images_outside_the_folder_are_refused(tmp_path, cache_dir):
    _png(tmp_path / "secret.png", 99)
    up = tmp_path / "up"
    _images(up, 3)
    _jsonl(up / "metadata.jsonl", _rows(3) + [{"file_name": "../secret.png", "question": "q?", "answer": "a"}])
    _refused(tmp_path, cache_dir, up, "outside the dataset's folder")
    absolute = tmp_path / "abs"
    _images(absolute, 3)
    _jsonl(absolute / "data.jsonl", _rows(3, "image") + [{"image": str(tmp_path / "secret.png"), "question": "q?",
                                                           "answer": "a"}])
    msg = _refused(tmp_path, cache_dir, absolute / "data.jsonl", "row 4: the image .* is outside")
    assert "split 'train'" in msg
    link = tmp_path / "link"
    _images(link, 3)
    _jsonl(link / "metadata.jsonl", _rows(3))
    os.symlink(tmp_path / "secret.png", link / "img9.png")
    _refused(tmp_path, cache_dir, link, "img9.png links outside the dataset's folder")
    from datasets import Dataset

    saved = tmp_path / "saved"  # a string column of a saved dataset: relative to its folder, never the shell's
    Dataset.from_dict({"image": ["../secret.png", "img0.png"], "question": ["q?"] * 2,
                       "answer": ["a", "b"]}).save_to_disk(str(saved))
    _refused(tmp_path, cache_dir, saved, "row 1: the image '../secret.png' is outside")


def test_a_fifo_is_refused_without_opening_it(tmp_path, cache_dir):
    root = tmp_path / "fifo"
    _images(root, 3)
    _jsonl(root / "metadata.jsonl", _rows(3))
    os.mkfifo(root / "img3.png")
    _refused(tmp_path, cache_dir, root, "img3.png is not a regular file")


def test_the_cache_key_follows_every_file_and_a_large_file_is_hashed_in_chunks(tmp_path, cache_dir, monkeypatch):
    root = tmp_path / "key"
    _images(root, 4)
    _jsonl(root / "metadata.jsonl", _rows(4))
    first, _ = _build(tmp_path, cache_dir, root)
    _png(root / "img2.png", 1234)
    user_data._BUILT.clear()  # a new process, as the next run would be
    second, _ = _build(tmp_path, cache_dir, root, name="mine")
    assert first != second
    user_data._BUILT.clear()
    reads = []
    real = open

    def spy(f, mode="r", *a, **kw):
        handle = real(f, mode, *a, **kw)
        if "b" in mode:
            read = handle.read
            handle.read = lambda n=-1: reads.append(n) or read(n)  # noqa: B023
        return handle

    monkeypatch.setattr("builtins.open", spy)
    from fl_sim.world import user_sources

    user_sources.content_hash(root)
    assert reads and all(0 < n <= 1 << 20 for n in reads)  # never a whole-file read


@pytest.mark.parametrize("value, message", [
    ("the", "normalises to nothing"), (".", "normalises to nothing"),
    ("\u200b", "the answer is empty|normalises to nothing"), ("<eos>", "holds '<eos>', a token the models reserve"),
    (" ".join(["word"] * 20), "the answer has 20 words"),
])
def test_answers_must_be_text_that_can_be_scored(tmp_path, cache_dir, value, message):
    root = tmp_path / "answers"
    _images(root, 3)
    _jsonl(root / "metadata.jsonl", _rows(2) + [{"file_name": "img2.png", "question": "q?", "answer": value}])
    msg = _refused(tmp_path, cache_dir, root, message)
    assert "row 3" in msg


@pytest.mark.parametrize("value, message", [(["blue", "BLUE"], "the answer is a list"),
                                            (True, "the answer is a boolean")])
def test_answers_of_other_types_are_refused(tmp_path, cache_dir, value, message):
    root = tmp_path / "typed"
    _images(root, 2)
    _jsonl(root / "metadata.jsonl", [{"file_name": f"img{i}.png", "question": "q?", "answer": value}
                                     for i in range(2)])
    assert "row 1" in _refused(tmp_path, cache_dir, root, message)


def test_questions_with_reserved_tokens_or_no_end_are_refused(tmp_path, cache_dir):
    root = tmp_path / "questions"
    _images(root, 3)
    _jsonl(root / "metadata.jsonl", _rows(2) + [{"file_name": "img2.png", "question": "what <image> is it?",
                                                 "answer": "x"}])
    _refused(tmp_path, cache_dir, root, "row 3: the question holds '<image>'")
    _jsonl(root / "metadata.jsonl", _rows(2) + [{"file_name": "img2.png", "question": "why " * 100_000,
                                                 "answer": "x"}])
    _refused(tmp_path, cache_dir, root, "row 3: the question has 100000 words; at most 64")


def test_numbers_as_answers_become_digits(tmp_path, cache_dir):
    root = tmp_path / "numbers"
    _images(root, 4)
    _jsonl(root / "metadata.jsonl", [{"file_name": f"img{i}.png", "question": "how many?", "answer": i}
                                     for i in range(4)])
    out, _ = _build(tmp_path, cache_dir, root, test_fraction=0.25)
    from datasets import concatenate_datasets, load_from_disk

    both = concatenate_datasets([load_from_disk(str(out / s)) for s in ("train", "test")])
    assert sorted(both["answer"]) == ["0", "1", "2", "3"]  # 0 is an answer, not an empty one


def test_images_convert_by_value_or_are_refused():
    grey16 = np.full((8, 8), 32768, np.uint16)  # half of the 16-bit range: mid grey, not white
    assert abs(int(to_rgb(Image.fromarray(grey16), 4, None).mean()) - 128) <= 1
    assert abs(int(to_rgb(grey16, 4, None).mean()) - 128) <= 1
    assert int(to_rgb(np.full((8, 8, 3), 0.5, np.float32), 4, None).mean()) in (127, 128)
    with pytest.raises(ImageError, match="NaN"):
        to_rgb(np.full((8, 8, 3), np.nan, np.float32), 4, None)
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # a transparent image: white, not black
    assert to_rgb(clear, 4, None).min() == 255
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * (256 * 3 - 6))
    assert tuple(to_rgb(palette, 4, None)[0, 0]) == (200, 10, 10)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    assert tuple(to_rgb(cmyk, 4, None)[0, 0]) == (255, 0, 0)


def test_metadata_naming_files_outside_and_broken_links_are_refused(tmp_path, cache_dir):
    (tmp_path / "elsewhere.jsonl").write_text(json.dumps({"image": "x.png", "question": "q?", "answer": "a"}) + "\n")
    card = tmp_path / "card"
    _images(card, 3)
    _jsonl(card / "metadata.jsonl", _rows(3))
    (card / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                    "  - split: train\n    path: ../elsewhere.jsonl\n---\n# data\n")
    _refused(tmp_path, cache_dir, card, "its metadata names '../elsewhere.jsonl', outside")
    from datasets import Dataset

    saved = tmp_path / "state"
    Dataset.from_dict({"image": ["img0.png"], "question": ["q?"], "answer": ["a"]}).save_to_disk(str(saved))
    state = json.loads((saved / "state.json").read_text())
    state["_data_files"][0]["filename"] = "../../elsewhere.arrow"
    (saved / "state.json").write_text(json.dumps(state))
    _refused(tmp_path, cache_dir, saved, "outside the dataset's folder")
    broken = tmp_path / "broken"
    _images(broken, 3)
    _jsonl(broken / "metadata.jsonl", _rows(3))
    os.symlink(tmp_path / "gone.png", broken / "img9.png")
    _refused(tmp_path, cache_dir, broken, "img9.png is a broken or looping link")


def test_depth_and_transparency_by_value():
    dark16 = np.full((8, 8), 200, np.uint16)  # a dark 16-bit image stays dark: its type says 16 bits
    assert int(to_rgb(dark16, 4, None).max()) <= 1
    grey_alpha = np.zeros((8, 8, 2), np.uint8)  # black, fully transparent: white
    assert to_rgb(grey_alpha, 4, None).min() == 255
    keyed = Image.new("L", (8, 8), 0)
    keyed.info["transparency"] = 0  # a tRNS colour key: that grey is transparent
    assert to_rgb(keyed, 4, None).min() == 255
