"""A fleet whose tiers are four model families (fl_sim/models/families.py) and whose teacher is a fifth,
through `fl-sim run` (tests/unit/models/test_families.py checks each family alone)."""

import json

import pytest
import tomli_w
from conftest import CDCCA, FAMILY_GEOMETRY, FEDAVG, tiny_data


@pytest.mark.slow
@pytest.mark.parametrize("base", [CDCCA, FEDAVG], ids=["cdcca", "fedavg"])
def test_a_fleet_of_four_families_runs_through_fl_sim_run(family_checkpoints, base, tmp_path, cache_dir):
    """Tiers Idefics3, Qwen2-VL, Gemma 3 and LLaVA-OneVision, the teacher CLIP+Llama: every tier has a view
    of its own (its devices upload the image regions of the tokens they keep) and averages within itself; two
    rounds through the CLI."""
    from fl_sim.app.cli import main
    from fl_sim.callbacks.results_file import read_results

    name = base["strategy"]["name"]
    data = tiny_data(base, cache_dir, tmp_path / "runs") | {"name": "four-families", "seed": 3}
    tiers = {f.replace("-", "_"): f for f in FAMILY_GEOMETRY}
    data["fleet"] = data["fleet"] | {"num_devices": 12, "tiers": {t: 0.25 for t in tiers}}
    data["strategy"] = data["strategy"] | {"clients_per_round": 8}
    data["models"] = {"teacher": str(family_checkpoints["clip-llama"]),
                      "tiers": {t: str(family_checkpoints[f]) for t, f in tiers.items()}}
    (tmp_path / "e.toml").write_text(tomli_w.dumps(data))
    assert main(["run", str(tmp_path / "e.toml"), "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "four-families" / f"{name}-3"
    rows = read_results(run_dir)
    assert {d["tier"] for d in json.loads((run_dir / "fleet.json").read_text())} == set(tiers)
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert set(r["acc_tier"]) == set(tiers) and r["uplink_bytes"] > 0 and r["failed"] == 0
    assert rows[-1]["downlink_bytes"] > 0
    if name == "cdcca":
        assert all(r["rejected_uploads"] == 0 and r["distilled_samples"] > 0 for r in rows)
        assert all(set(r["akd_rows"]) == set(r["akd_unfit_rows"]) == set(tiers) for r in rows)
