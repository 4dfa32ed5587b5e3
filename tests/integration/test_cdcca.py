"""CD-CCA end to end through Flower's real ``run_simulation`` on tiny presets."""

import logging
import shutil

import pytest
from conftest import CDCCA, tiny_config

from fl_sim.app.run import resume_experiment, run_experiment
from fl_sim.callbacks.results_file import read_results


def _cfg(tmp_path, cache_dir, **over):
    return tiny_config(CDCCA, tmp_path, cache_dir, **over)


def test_two_round_cdcca(cdcca_run):
    run_dir, res = cdcca_run
    assert [r["round"] for r in res] == [1, 2]
    for r in res:
        assert r["participants"] == 4 and r["failed"] == 0 and r["rejected_uploads"] == r["rejected_downlinks"] == 0
        assert r["uploaded_samples"] == 4 * 4  # budget 0.5 of 8 samples on each of 4 devices
        assert r["dwc_ratio_dense"] > 1 and "akd_kl" in r and "akd_feat" in r
        assert set(r["acc"]) == {"source", "dusk", "novel", "digits", "overall"}
    assert res[0]["downlink_bytes"] < res[1]["downlink_bytes"]  # round 1: devices still at version 0
    for tier in ("tiny-high", "tiny-low"):
        assert (run_dir / "dwc" / tier / "p2.safetensors").is_file()


def test_uts_uplink_is_far_smaller_than_raw_images(cdcca_run, tmp_path, cache_dir):
    _, res = cdcca_run
    full = read_results(run_experiment(_cfg(tmp_path, cache_dir, **{"strategy.name": "cloud-kd-full"})))
    assert full[0]["uploaded_samples"] == 4 * 8
    assert sum(r["uplink_bytes"] for r in full) > 3 * sum(r["uplink_bytes"] for r in res)
    assert sum(r["downlink_bytes"] for r in full) > sum(r["downlink_bytes"] for r in res)


def test_malformed_uploads_are_rejected_and_counted(tmp_path, cache_dir, tiny_zoo, caplog):
    with caplog.at_level(logging.WARNING, logger="strategies.cdcca"):
        res = read_results(run_experiment(_cfg(tmp_path, cache_dir, **{"fleet.corrupt_prob": 1.0})))
    assert [r["rejected_uploads"] for r in res] == [4, 4]
    assert all(r["uploaded_samples"] == 0 and r["participants"] == 4 and r["failed"] == 0 for r in res)
    reasons = [m for m in caplog.messages if "rejected upload of device" in m]
    assert len(reasons) == 8 and all(m.split(": ", 2)[2] for m in reasons)  # each with its reason
    assert any("longer than" in m for m in reasons)  # the length check (one of the injected faults here)


def test_damaged_downlinks_are_rejected_counted_and_refreshed(tmp_path, cache_dir, tiny_zoo, caplog):
    """Every downlink arrives damaged: devices keep their weights and say why; the cloud counts them and
    sends each a dense refresh next (damaged too, here), and the rounds go on."""
    with caplog.at_level(logging.WARNING, logger="strategies.cdcca"):
        res = read_results(run_experiment(_cfg(tmp_path, cache_dir, rounds=3, **{"fleet.corrupt_downlink_prob": 1.0})))
    assert [r["rejected_downlinks"] for r in res] == [0, 4, 4]  # round 1 has nothing to send yet
    assert all(r["failed"] == 0 and r["uploaded_samples"] == 16 for r in res)
    rejected = [m for m in caplog.messages if "rejected its downlink" in m]
    assert sum("round 2:" in m and "full refresh" not in m for m in rejected) == 4  # a payload lost its last byte
    assert sum("round 3:" in m and "full refresh contains NaN" in m for m in rejected) == 4


def test_cdcca_resume_equals_uninterrupted(cdcca_run):
    """Kill after round 1 (round 2's checkpoint and result removed), resume: the same figures as the full run.

    CD-CCA's state crosses the checkpoint: cloud copies, held weights, error-feedback residuals, alignment
    maps, the replay buffer, per-device versions."""
    run_dir, full = cdcca_run
    # in place (this is the module's last user of the run): devices are told the absolute path of the
    # version store, so a copy elsewhere would differ in downlink bytes by the path's length
    shutil.rmtree(run_dir / "checkpoint" / "round-00002")
    resume_experiment(run_dir)
    resumed = read_results(run_dir)
    assert [r["round"] for r in resumed] == [1, 2]
    for a, b in zip(full, resumed):
        for key in ("acc", "acc_tier", "uplink_bytes", "downlink_bytes", "uploaded_samples", "replay_size",
                    "dwc_payload_bytes", "virtual_time_s"):
            assert a[key] == b[key], key
        assert a["akd_loss"] == pytest.approx(b["akd_loss"], rel=1e-5)


def test_the_teacher_is_asked_more_questions_about_each_upload(cdcca_run, tmp_path, cache_dir, monkeypatch):
    """``strategy.akd.extra_questions`` in the fleet: the same uploads (same participation and uplink as the
    plain run), and the teacher's answers to questions generated from its captions are distilled with them.
    The tiny teacher's own captions rarely parse, so its caption pass is replaced by a fixed true-format
    caption (in this process: no workers); question generation, the teacher's answers and their
    distillation run as they do."""
    import fl_sim.cloud.teacher_jobs as qj
    from fl_sim.world.domains import CAPTION_QUESTION

    real = qj.answer_with_stats

    def captions_that_parse(model, pr, vis, questions, *a, **kw):
        if list(questions) == [CAPTION_QUESTION] * len(questions):
            return ["small red circle top left and large blue square center"] * len(questions), {}
        return real(model, pr, vis, questions, *a, **kw)

    monkeypatch.setattr(qj, "answer_with_stats", captions_that_parse)
    _, plain = cdcca_run
    res = read_results(run_experiment(_cfg(tmp_path, cache_dir, **{"strategy.akd.extra_questions": 2,
                                                                   "strategy.akd.workers": 0})))  # patched here
    for r, p in zip(res, plain):
        assert r["uploaded_samples"] == p["uploaded_samples"] == 16 and r["uplink_bytes"] == p["uplink_bytes"]
        assert 0 < r["extra_questions"] <= 2 * r["uploaded_samples"] and p["extra_questions"] == 0
        assert r["distilled_samples"] == r["uploaded_samples"] + r["extra_questions"]
        assert r["cloud_s"] > p["cloud_s"]  # the captions and extra answers are charged to the cloud's time
        assert r["akd_loss"] != p["akd_loss"]  # the extra samples were trained on


def test_bytes_do_not_depend_on_simulation_plumbing(cdcca_run, tmp_path, cache_dir):
    """Only what a real device receives or sends is counted: a run whose directory (and so its DWC
    store and device environment paths) is far longer logs the same bytes, round by round."""
    _, res = cdcca_run
    deep = tmp_path / ("very-long-directory-name-" * 6) / "nested"
    other = read_results(run_experiment(tiny_config(CDCCA, deep, cache_dir)))
    assert [(r["uplink_bytes"], r["downlink_bytes"]) for r in other] == [
        (r["uplink_bytes"], r["downlink_bytes"]) for r in res]
    assert [r["acc"] for r in other] == [r["acc"] for r in res]


@pytest.mark.parametrize("selection", ["top", "random"])
def test_sparse_training_moves_only_what_the_payload_can_carry(tmp_path, cache_dir, tiny_zoo, selection):
    """``strategy.dwc.sparse_train``: after round 1 the cloud copy differs from the initial adapters in at
    most ``max_density`` of the entries (every entry moves under dense AdamW), and with seeded selection
    only within the entries of the payload the devices got (a Bernoulli(max_density) draw). The top-k run
    also puts LoRA on the projector (``strategy.lora_projector``): devices must load the same adapters."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file as load_np
    from safetensors.torch import load_file

    from fl_sim.device import model_cache
    from fl_sim.mechanisms import dwc

    run_dir = run_experiment(_cfg(tmp_path, cache_dir, **{
        "strategy.dwc.sparse_train": True, "strategy.dwc.selection": selection,
        "strategy.dwc.probe_steps": 2, "strategy.lora_projector": selection == "top"}))
    res = read_results(run_dir)
    # round 2: every device applied the round-1 payload to its own adapters
    assert [(r["rejected_downlinks"], r["participants"]) for r in res] == [(0, 4), (0, 4)]
    assert res[1]["downlink_bytes"] > 0 and res[0]["dwc_ratio_dense"] > 1
    for tier in ("tiny-high", "tiny-low"):
        projector = "lora" if selection == "top" else "full"
        _, init = model_cache.adapted_model(str(tiny_zoo.paths[tier]), 4, True, projector)
        assert any("multi_modal_projector" in k and "lora_" in k for k in init) == (selection == "top")
        cloud = load_file(str(run_dir / "checkpoint" / "round-00001" / f"cloud.{tier}.safetensors"))
        moved = np.flatnonzero(np.concatenate([(cloud[k] != init[k]).reshape(-1).numpy() for k in sorted(init)]))
        numel = sum(v.numel() for v in init.values())
        assert moved.size > 0
        payload = load_np(str(run_dir / "dwc" / tier / "p1.safetensors"))["payload"].tobytes()
        sent = dwc.decode(payload, {k: torch.zeros_like(v) for k, v in init.items()})
        sent_idx = np.flatnonzero(np.concatenate([sent[k].reshape(-1).numpy() for k in sorted(init)]))
        if selection == "random":
            h, pos = dwc.parse_header(payload)
            seed, t = (int(v) for v in np.frombuffer(payload[pos:pos + 16], "<u8"))
            entries = dwc.seeded_entries(seed, t, numel)
            assert h["index_code"] == dwc.SEEDED and np.isin(moved, entries).all()
            assert np.isin(sent_idx, entries).all() and abs(entries.size - 0.2 * numel) < 5 * (0.16 * numel) ** 0.5
        else:
            assert moved.size <= int(np.ceil(0.2 * numel))
            assert np.isin(sent_idx, moved).all()  # what was sent is what moved
