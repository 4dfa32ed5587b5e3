"""The capacity estimate (fl_sim/app/capacity.py) counts what a run's settings add: its datasets on disk,
its adapters' rank, its Ray workers."""

import pytest

from fl_sim.app import capacity
from fl_sim.config import parse_config


def _cfg(**over):
    return parse_config({"name": "x", "zoo": "tiny", "strategy": {"name": "cdcca"}}, over)


def _memory(cfg, devices=100, cloud=0):
    return capacity.needs(cfg, devices, cloud)["memory"]


def test_a_users_dataset_is_held_like_a_built_in_domain(tmp_path):
    base = _cfg()
    mine = parse_config({"name": "x", "zoo": "tiny", "domains": {"mine": {"path": str(tmp_path)}}})
    assert capacity.domains(mine) == capacity.domains(base) + 1
    key = "datasets (eval.n_test, fleet.samples_per_round)"
    assert _memory(mine)[key] - _memory(base)[key] == pytest.approx(base.eval.n_test * capacity.PER_SAMPLE_BYTES)


def test_the_adapters_grow_with_their_rank_and_the_processes_that_train_them(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    key = "adapters (strategy.lora_r)"
    low, high = _memory(_cfg(**{"strategy.lora_r": 4}))[key], _memory(_cfg(**{"strategy.lora_r": 16}))[key]
    assert high == pytest.approx(4 * low) and low > 0
    one, four = (_memory(_cfg(**{"simulation.num_cpus_per_client": c}))[key] for c in (4, 1))
    assert four / one == pytest.approx((4 + 1) / (1 + 1))  # workers plus the driver
    shapes = capacity.tier_shapes(_cfg())
    r = _cfg().strategy.lora_r
    assert capacity.adapter_bytes(_cfg()) == 16 * sum(r * n * (8 * h + 3 * f) for h, n, f in shapes.values())


def test_a_checkpoints_shape_comes_from_its_config(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 96, "num_hidden_layers": 3,
                                                                      "intermediate_size": 200}}))
    cfg = parse_config({"name": "x", "zoo": "tiny", "models": {"tiers": {"mine": str(tmp_path)}}})
    assert capacity.tier_shapes(cfg) == {"mine": (96, 3, 200)}
