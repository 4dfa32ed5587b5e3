import json

import pytest

from fl_sim.cache import get_or_build, verify
from fl_sim.world.domains import corpus_words
from fl_sim.world.tokenizer import load_tokenizer


def test_tokenizer_round_trip(cache_dir):
    tok = load_tokenizer(cache_dir)
    text = "where is the purple diamond ? describe the image . large cyan 7 bottom right"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert all(tok.convert_tokens_to_ids(w) != tok.unk_token_id for w in corpus_words())
    again = load_tokenizer(cache_dir)
    assert again.get_vocab() == tok.get_vocab()


def test_cache_rebuilds_partial_and_corrupt_entries(tmp_path):
    calls = []

    def build(d):
        calls.append(1)
        (d / "x.json").write_text(json.dumps({"v": len(calls)}))
        return {"n": len(calls)}

    entry = tmp_path / "entry"
    get_or_build(entry, build)
    get_or_build(entry, build)
    assert len(calls) == 1 and verify(entry) is None
    (entry / "x.json").write_text('{"v": 99}')  # same size, other bytes
    assert "corrupt" in verify(entry)
    get_or_build(entry, build)
    assert len(calls) == 2 and json.loads((entry / "x.json").read_text()) == {"v": 2}
    (entry / "MANIFEST.json").unlink()  # a partial write never sealed
    assert "no manifest" in verify(entry)
    get_or_build(entry, build)
    assert len(calls) == 3


def test_failed_build_leaves_no_entry(tmp_path):
    def build(d):
        (d / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        get_or_build(tmp_path / "e", build)
    assert not (tmp_path / "e").exists()
    assert list(tmp_path.iterdir()) == []
