"""Datasets on disk as domains (fl_sim.world.user_data): both formats, images of any size and mode, a
held-out split that keeps every image on one side, an open vocabulary, answer normalisation, a tiny fleet
on a user domain, and the one-line errors for bad data."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FEDAVG, tiny_config
from PIL import Image

from fl_sim import FlSimError
from fl_sim.config import UserDomainConfig
from fl_sim.world import user_data
from fl_sim.world.answers import matches, normalise
from fl_sim.world.catalog import DomainCatalog

FRUIT = ["apple", "banana", "cherry", "grape", "lemon", "mango"]


def _image(i: int, size=(20, 30), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(i)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


def image_folder(root, n_images=6, fmt="jsonl", extra_rows=()):
    """An imagefolder with two questions per image (file_name + question + answer + kind)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        mode = ("RGB", "L", "RGBA")[i % 3]
        _image(i, size=(16 + 4 * i, 24), mode=mode).save(root / f"img{i}.png")
        rows += [{"file_name": f"img{i}.png", "question": "Which fruit is painted here?",
                  "answer": f"A {FRUIT[i % len(FRUIT)].title()}.", "kind": "what"},
                 {"file_name": f"img{i}.png", "question": "How many stalks?", "answer": ["one", "two"][i % 2],
                  "kind": "count"}]
    rows += list(extra_rows)
    if fmt == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(root / "metadata.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return root


def saved_dataset(root, n=10, **columns):
    from datasets import Dataset

    data = {"picture": [_image(i, size=(12, 12)) for i in range(n)],
            "prompt": [f"is the {FRUIT[i % 6]} ripe?" for i in range(n)],
            "reply": [["yes", "no"][i % 2] for i in range(n)]} | columns
    Dataset.from_dict(data).save_to_disk(str(root))
    return root


def test_an_image_folder_becomes_a_domain_without_leaking_images(tmp_path, cache_dir):
    for fmt in ("jsonl", "csv"):
        spec = UserDomainConfig(path=str(image_folder(tmp_path / fmt, fmt=fmt)), question_type="kind",
                                test_fraction=0.3)
        catalog = DomainCatalog({"fruit": spec}, cache_dir)
        train = catalog.load("fruit", "train", 10**6, 0, 16)
        test = catalog.load("fruit", "test", 10**6, 0, 16)
        assert len(train) + len(test) == 12 and len(test) == 4  # 2 of 6 images, both questions of each
        images = np.asarray(train["image"])
        assert images.shape[1:] == (48, 48, 3) and 0 <= images.min() and images.max() <= 255
        seen = {im.tobytes() for im in images}
        assert not any(im.tobytes() in seen for im in np.asarray(test["image"]))
        assert set(train["family"]) | set(test["family"]) == {"what", "count"}
        assert set(test["domain"]) == {"fruit"}


def test_a_saved_dataset_with_other_column_names_and_its_own_test_split(tmp_path, cache_dir):
    from datasets import DatasetDict, load_from_disk

    src = saved_dataset(tmp_path / "flat")
    spec = UserDomainConfig(path=str(src), image="picture", question="prompt", answer="reply")
    assert len(DomainCatalog({"ripe": spec}, cache_dir).load("ripe", "test", 100, 0, 16)) == 2  # ceil(0.2 * 10) images
    split = tmp_path / "dict"
    flat = load_from_disk(str(src))
    DatasetDict({"train": flat.select(range(7)), "test": flat.select(range(7, 10))}).save_to_disk(str(split))
    catalog = DomainCatalog({"ripe": spec.model_copy(update={"path": str(split)})}, cache_dir)
    assert len(catalog.load("ripe", "test", 100, 0, 16)) == 3
    assert len(catalog.load("ripe", "train", 5, 0, 16)) == 5  # a seeded choice of rows


def test_the_vocabulary_covers_the_new_words_and_the_cache_key_follows_the_data(tmp_path, cache_dir):
    from fl_sim.world.tokenizer import load_tokenizer

    base = load_tokenizer(cache_dir)
    src = image_folder(tmp_path / "a")
    spec = UserDomainConfig(path=str(src))
    tok = load_tokenizer(cache_dir, catalog=DomainCatalog({"fruit": spec}, cache_dir))
    unk = tok.convert_tokens_to_ids("<unk>")
    ids = tok("A Banana. A Mango.", add_special_tokens=False)["input_ids"]
    assert unk not in ids and len(set(ids)) == 3  # "A", "Banana.", "Mango.": two answers, two ids
    assert len(tok) > len(base)
    first = user_data.build("fruit", spec, 16, cache_dir)
    (src / "metadata.jsonl").write_text((src / "metadata.jsonl").read_text().replace("Cherry", "Durian"))
    user_data._BUILT.clear()
    second = user_data.build("fruit", spec, 16, cache_dir)
    assert first != second and first.is_dir()  # new data, new entry; the old one is kept
    assert "Durian." in load_tokenizer(cache_dir, catalog=DomainCatalog({"fruit": spec}, cache_dir)).get_vocab()


def test_a_users_words_come_after_the_built_in_ids_and_leave_the_models_initial_weights(tmp_path, cache_dir):
    """User words that are also built-in words ("how", "many") keep their ids, the new ones come after, and a
    model drawn for the larger vocabulary starts with the built-in one's weights (its user rows added)."""
    import torch

    from fl_sim.models.mllm import build_mllm
    from fl_sim.models.presets import get_zoo
    from fl_sim.world.tokenizer import BUILT_IN_VOCAB, load_tokenizer

    src = image_folder(tmp_path / "a", extra_rows=[{"file_name": "img0.png", "question": "how many are there ?",
                                                    "answer": "four", "kind": "count"}])
    base = load_tokenizer(cache_dir)
    tok = load_tokenizer(cache_dir, catalog=DomainCatalog({"fruit": UserDomainConfig(path=str(src))}, cache_dir))
    assert len(base) == BUILT_IN_VOCAB
    assert {w: i for w, i in tok.get_vocab().items() if i < BUILT_IN_VOCAB} == base.get_vocab()
    assert tok.convert_tokens_to_ids("Banana.") >= BUILT_IN_VOCAB
    zoo = get_zoo("tiny")
    torch.manual_seed(0)
    plain = build_mllm(zoo.tiers["tiny-low"], zoo.frontend, 16, base).state_dict()
    torch.manual_seed(0)
    model = build_mllm(zoo.tiers["tiny-low"], zoo.frontend, 16, tok)
    wider = model.state_dict()
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert model.config.text_config.vocab_size == len(tok)
    assert all(torch.equal(v, wider[k][:len(v)]) for k, v in plain.items())
    assert wider["lm_head.weight"].shape[0] == len(tok) > BUILT_IN_VOCAB


def test_a_refitted_model_starts_from_the_built_in_one_with_the_users_words_added(tmp_path, cache_dir):
    """With user domains a model (teacher or tier) starts from its built-in counterpart's saved weights (every
    built-in row as saved), its user word rows appended and still tied to the output layer."""
    import torch

    from fl_sim.models.mllm import build_mllm, load_mllm
    from fl_sim.models.presets import get_zoo
    from fl_sim.models.zoo import _start
    from fl_sim.world.tokenizer import load_tokenizer

    src = image_folder(tmp_path / "a")
    base = load_tokenizer(cache_dir)
    tok = load_tokenizer(cache_dir, catalog=DomainCatalog({"fruit": UserDomainConfig(path=str(src))}, cache_dir))
    zoo = get_zoo("tiny")
    torch.manual_seed(5)
    build_mllm(zoo.tiers["tiny-low"], zoo.frontend, 16, base).save_pretrained(tmp_path / "tier")
    saved = load_mllm(tmp_path / "tier")
    model = _start(zoo.tiers["tiny-low"], zoo, 16, 0, tok, tmp_path / "tier")
    wider = model.state_dict()
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert model.config.text_config.vocab_size == len(tok) > len(base)
    assert all(torch.equal(v, wider[k][:len(v)]) for k, v in saved.state_dict().items())


def test_answers_are_normalised():
    assert normalise("Two Cats.") == normalise("2 cats") == "2 cats"
    assert matches("the apple", "An Apple!") and not matches("cat", "cats")
    assert normalise("3.5 m") == "3.5 m"


def _bad(tmp_path, name, **kw):
    return UserDomainConfig(path=str(tmp_path / name), **kw)


def test_bad_data_is_one_line_naming_the_dataset_and_caches_nothing(tmp_path, cache_dir):
    from pathlib import Path

    image_folder(tmp_path / "ok")
    image_folder(tmp_path / "noanswer", extra_rows=[{"file_name": "img0.png", "question": "why?", "answer": " ",
                                                    "kind": "what"}])
    broken = image_folder(tmp_path / "broken")
    (broken / "img1.png").write_bytes(b"not a png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metadata.jsonl").write_text("\n")
    (tmp_path / "plain").mkdir()
    cases = {
        "nowhere": (_bad(tmp_path, "nowhere"), "no such file or directory"),
        "plain": (_bad(tmp_path, "plain"), "the folder holds no files"),
        "nocolumn": (_bad(tmp_path, "ok", question_type="level"), "no column 'level'"),
        "empty": (_bad(tmp_path, "empty"), "the split is empty"),
        "broken": (_bad(tmp_path, "broken"), "does not"),
        "noanswer": (_bad(tmp_path, "noanswer"), "the answer is empty"),
    }
    data = Path(cache_dir) / "data"
    before = sorted(p.name for p in data.iterdir()) if data.is_dir() else []
    for name, (spec, message) in cases.items():
        with pytest.raises(FlSimError, match=message) as e:
            DomainCatalog({name: spec}, cache_dir).build_all()
        assert str(e.value).startswith(f"domains.{name} (") and "\n" not in str(e.value), str(e.value)
    after = sorted(p.name for p in data.iterdir()) if data.is_dir() else []
    assert [n for n in after if n not in before and not n.startswith(".")] == []
    with pytest.raises(FlSimError, match="domains.dusk: the name is taken"):
        tiny_config(FEDAVG, tmp_path, cache_dir, **{"domains": {"dusk": {"path": str(tmp_path / "ok")}}})


@pytest.mark.slow
def test_a_tiny_fleet_shifts_to_a_user_domain(tmp_path, cache_dir, tiny_zoo):
    """Two rounds of fedavg on the tiny zoo (re-fitted for the new vocabulary, the teacher on the user domain
    too): devices shift to the user domain, which is evaluated with normalised and raw accuracy."""
    from fl_sim.app.run import run_experiment
    from fl_sim.callbacks.results_file import read_results

    src = image_folder(tmp_path / "fruit", n_images=10)
    cfg = tiny_config(FEDAVG, tmp_path, cache_dir, **{"domains": {"fruit": {"path": str(src), "question_type": "kind"}},
                                                      "fleet.shift_domains": {"fruit": 1.0},
                                                      "fleet.shift_round": [2, 2]})
    run_dir = run_experiment(cfg)
    rows = read_results(run_dir)
    assert [r["round"] for r in rows] == [1, 2]
    assert "fruit" in rows[-1]["acc"] and 0 <= rows[-1]["acc"]["fruit"] <= 1
    fleet = json.loads((run_dir / "fleet.json").read_text())
    assert {row["shift_domain"] for row in fleet} == {"fruit"}
    models = json.loads((run_dir / "models.json").read_text())
    assert models["teacher"]["path"] != str(tiny_zoo.paths["teacher"])  # a zoo of its own: new words, new data
    teacher = json.loads((Path(models["teacher"]["path"]) / "MANIFEST.json").read_text())["meta"]
    assert "fruit" in teacher["trained_on"]
    assert teacher["train"]["steps"] == 2 * 30  # the user's half: the built-in domains keep the preset's 30 steps
    assert teacher["refit_from"] == tiny_zoo.paths["teacher"].name  # re-fitted from the tiny zoo's teacher
    for tier in ("tiny-high", "tiny-low"):  # re-fitted from the tiny zoo's own tiers, in a quarter of the steps
        meta = json.loads((Path(models[tier]["path"]) / "MANIFEST.json").read_text())["meta"]
        assert meta["refit_from"] == tiny_zoo.paths[tier].name and meta["train"]["steps"] == 20 // 4
    # stage A+: the shared front-end trained on the user's images too (its own folder, its own weights)
    metas = {p: json.loads((p / "MANIFEST.json").read_text())["meta"]
             for p in Path(cache_dir, "models").glob("frontend-*")}
    adapted = [p for p, m in metas.items() if "fruit" in m.get("train_user", {}).get("domains", [])]
    assert len(adapted) == 1 and "train_user" not in metas[tiny_zoo.paths["frontend"]]
    stage = metas[adapted[0]]["train_user"]
    assert stage["steps"] == 10 and stage["answers"] >= 2  # "one", "two" and the fruits given twice
    assert 0 <= stage["answer_accuracy"] <= 1 and stage["drift"] >= 0
    from safetensors.torch import load_file

    def tower(folder):
        return load_file(folder / "model.safetensors")
    user, plain = tower(adapted[0]), tower(tiny_zoo.paths["frontend"])
    assert user.keys() == plain.keys() and any(not (user[k] == plain[k]).all() for k in user)


def test_training_streams_move_the_users_pictures_and_leave_the_built_in_world_as_drawn(tmp_path, cache_dir):
    from fl_sim.models.train import MixedStream

    catalog = DomainCatalog({"fruit": UserDomainConfig(path=str(image_folder(tmp_path / "f")))}, cache_dir)
    plain = MixedStream(["source", "fruit"], 0, 16, catalog=catalog).batch(60)
    moved = MixedStream(["source", "fruit"], 0, 16, catalog=catalog, shift=2).batch(60)
    assert [s["domain"] for s in plain] == [s["domain"] for s in moved]  # the same draws
    pairs = [(a["image"], b["image"], a["domain"]) for a, b in zip(plain, moved)]
    assert all((a == b).all() for a, b, d in pairs if d == "source")
    user = [(a, b) for a, b, d in pairs if d == "fruit"]
    assert user and any((a != b).any() for a, b in user) and all(a.shape == b.shape for a, b in user)
