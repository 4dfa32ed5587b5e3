"""Server checkpoints: safetensors + JSON per round, the newest complete one wins, old ones are pruned."""

import json

import torch

from fl_sim.callbacks.checkpoint_files import load_checkpoint, save_checkpoint


def test_round_trip_keeps_every_group_and_the_state(tmp_path):
    tensors = {"tier-a": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.int64)},
               "replay": {}}
    save_checkpoint(tmp_path, 3, {"clock_s": 12.5, "totals": {"uplink_bytes": 7}}, tensors)
    state, back = load_checkpoint(tmp_path)
    assert state["round"] == 3 and state["clock_s"] == 12.5 and state["totals"] == {"uplink_bytes": 7}
    assert sorted(back) == ["replay", "tier-a"] and back["replay"] == {}
    assert torch.equal(back["tier-a"]["w"], tensors["tier-a"]["w"]) and back["tier-a"]["b"].dtype == torch.int64


def test_the_newest_complete_round_wins_and_old_rounds_are_pruned(tmp_path):
    assert load_checkpoint(tmp_path) is None
    for r in (1, 2, 3):
        save_checkpoint(tmp_path, r, {"r": r}, {"g": {"x": torch.full((2,), float(r))}}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["round-00002", "round-00003"]
    # a round whose state.json was never written (killed mid-save) is ignored
    (tmp_path / "checkpoint" / "round-00004").mkdir()
    (tmp_path / "checkpoint" / "round-00004" / "g.safetensors").write_bytes(b"partial")
    state, tensors = load_checkpoint(tmp_path)
    assert state["round"] == 3 and float(tensors["g"]["x"][0]) == 3.0
    assert json.loads((tmp_path / "checkpoint" / "round-00003" / "state.json").read_text())["groups"] == ["g"]


def test_rounds_sort_by_number_not_by_name(tmp_path):
    for r in (9, 10):
        save_checkpoint(tmp_path, r, {}, {"g": {"x": torch.tensor([float(r)])}}, keep=5)
    assert load_checkpoint(tmp_path)[0]["round"] == 10
