"""The cloud's jobs (tiers' AKD, the teacher's labels and questions, evaluation) on Ray actors
(``fl_sim.cloud.actors``)."""

import logging

import numpy as np
import pytest
import torch

from fl_sim import FlSimError
from fl_sim.cloud import actors, teacher_jobs, tier_job
from fl_sim.config import AKDConfig, DWCConfig
from fl_sim.device import model_cache
from fl_sim.mechanisms import akd


def _targets(n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 50, (n, 6), generator=g),
            "t_hidden": torch.randn(n, 6, 4, generator=g).half(), "distil": torch.rand(n, generator=g)}


def test_a_plan_rebuilds_every_batch_from_the_rows_it_uses():
    sources = {"new": _targets(20, 0), "replay": _targets(9, 1), "anchor": _targets(7, 2), "unused": _targets(3, 3)}
    rng = np.random.default_rng(0)
    draws = [[("new", rng.choice(20, 4, replace=False)), ("replay", rng.choice(9, 3, replace=False)),
              ("anchor", rng.choice(7, 2, replace=False))] for _ in range(5)]
    draws.append([("anchor", rng.choice(7, 5, replace=False))])  # a batch without new or replayed samples
    table, plan = tier_job.plan_batches(draws, sources)
    assert akd.size(table) < 5 * 9 + 5 and akd.size(table) == len(np.unique(np.concatenate(plan)))
    for parts, rows in zip(draws, plan):
        expect = akd.concat([akd.take(sources[name], idx) for name, idx in parts])
        got = akd.take(table, rows)
        assert all(torch.equal(expect[k], got[k]) for k in expect)


def _teacher_inputs(tiny_zoo, domain: str, n: int = 24):
    """``(teacher, prompter, visual tokens, questions)`` of ``n`` train samples of ``domain``."""
    from fl_sim.models.mllm import visual_tokens

    pr, teacher = tiny_zoo.prompter, model_cache.base_model(str(tiny_zoo.paths["teacher"]))
    ds = model_cache.split(domain, "train", 64, 0, None).select(range(n))
    with torch.no_grad():
        vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
    return teacher, pr, vis, list(ds["question"])


@pytest.fixture(scope="module")
def jobs(tiny_zoo):
    """Three rounds' worth of jobs on the tiny zoo's tiers: plain, with seeded masks, with a dense probe."""
    teacher, pr, vis, questions = _teacher_inputs(tiny_zoo, "dusk")
    targets = akd.teacher_targets(teacher, pr, vis, questions, max_new_tokens=6)
    rng = np.random.default_rng(1)
    cfg = AKDConfig(steps=3, batch_size=8)
    out = []
    for i, tier in enumerate(["tiny-high", "tiny-low", "tiny-high"]):
        _, init = model_cache.adapted_model(str(tiny_zoo.paths[tier]), 4, True, "full")
        width = model_cache.base_model(str(tiny_zoo.paths[tier])).config.text_config.hidden_size
        torch.manual_seed(i)
        align = torch.nn.Linear(width, teacher.config.text_config.hidden_size).state_dict()
        probe = DWCConfig(sparse_train=True, probe_steps=2, max_density=0.2) if i == 2 else None
        draws = [[("new", rng.choice(24, 8, replace=False))] for _ in range(cfg.steps + (2 if probe else 0))]
        table, plan = tier_job.plan_batches(draws, {"new": targets})
        masks = {k: torch.rand(v.shape) < 0.3 for k, v in init.items()} if i == 1 else None
        residual = {k: torch.randn(v.shape) * 1e-3 for k, v in init.items()} if probe else {}
        out.append(tier_job.TierJob(str(tiny_zoo.paths[tier]), (4, True, "full"), cfg, 100 + i, init, align, table,
                                    plan, masks, probe, residual, threads=1))
    return out


def _same(a: tier_job.TierResult, b: tier_job.TierResult) -> bool:
    return (set(a.cloud) == set(b.cloud) and all(torch.equal(a.cloud[k], b.cloud[k]) for k in a.cloud)
            and all(torch.equal(a.align[k], b.align[k]) for k in a.align) and a.losses == b.losses)



def test_without_ray_every_job_runs_here(jobs):
    import ray

    assert not ray.is_initialized()
    got = actors.ActorGroup("akd", 2).run(jobs[:2])
    assert all(_same(a, tier_job.run(j)) for a, j in zip(got, jobs[:2]))


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance of this process's own, as the simulation's would be."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_actors_train_what_this_process_trains(jobs, local_ray):
    """Two actors and this process take a job each: the same adapters, losses and alignment map as all three
    run here. A masked job moves only its entries; a probed one at most ``max_density`` of them."""
    here = [tier_job.run(j) for j in jobs]
    cloud = actors.ActorGroup("akd", 2)
    try:
        there = cloud.run(jobs)
        assert len(cloud._actors) == 2
    finally:
        cloud.close()
    assert all(_same(a, b) for a, b in zip(here, there))
    masked, probed = jobs[1], jobs[2]
    moved = {k: here[1].cloud[k] != masked.cloud[k] for k in masked.cloud}
    assert any(m.any() for m in moved.values()) and all(not (m & ~masked.masks[k]).any() for k, m in moved.items())
    changed = sum(int((here[2].cloud[k] != probed.cloud[k]).sum()) for k in probed.cloud)
    assert 0 < changed <= np.ceil(0.2 * sum(v.numel() for v in probed.cloud.values()))


def test_a_dead_actor_is_replaced_and_its_job_retried_there(jobs, local_ray, caplog):
    import ray

    cloud = actors.ActorGroup("akd", 1)
    try:
        cloud.start()
        dead = cloud._actors[0]
        ray.kill(dead)
        with caplog.at_level(logging.WARNING, logger="fl_sim.cloud.actors"):
            got = cloud.run(jobs[:2])
        assert _same(got[1], tier_job.run(jobs[1]))
        assert any("cloud akd actor 0 died" in m and "retried on a new actor" in m for m in caplog.messages)
        assert cloud._actors[0] is not None and cloud._actors[0] != dead
    finally:
        cloud.close()


def test_a_job_that_fails_on_an_actor_is_rerun_here_with_its_error(jobs, local_ray, caplog):
    """A job an actor cannot run (its model folder is gone there, say) is reported and run here; the error
    here is the cloud's own."""
    bad = tier_job.TierJob(**{**jobs[1].__dict__, "model_path": "/nonexistent/model"})
    cloud = actors.ActorGroup("akd", 1)
    try:
        with caplog.at_level(logging.WARNING, logger="fl_sim.cloud.actors"):
            with pytest.raises(FlSimError, match="nonexistent"):
                cloud.run([jobs[0], bad])
    finally:
        cloud.close()
    assert any("cloud akd actor 0 failed" in m and "nonexistent" in m for m in caplog.messages)


def test_auto_workers_one_per_tier_beyond_the_first_on_a_cpu(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert [actors.default_cloud_workers(n, True) for n in (0, 1, 2, 3)] == [0, 0, 1, 2]
    assert actors.default_cloud_workers(3, False) == 0
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert actors.default_cloud_workers(3, True) == 0


@pytest.fixture(scope="module")
def uploads(tiny_zoo):
    return _teacher_inputs(tiny_zoo, "source")[2:]


def _teacher(tiny_zoo):
    from fl_sim.world.catalog import NO_DOMAINS

    return teacher_jobs.Teacher(str(tiny_zoo.paths["teacher"]), False, None, NO_DOMAINS, 6)


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def replicas(local_ray):
    """Two teacher replicas (a group without a share for this process), for the tests below."""
    group = actors.ActorGroup("teacher", 2, local=False)
    yield group
    group.close()


def test_the_teachers_extra_questions_cross_an_actor_unchanged(tiny_zoo, uploads, replicas):
    """A ``QuestionsJob`` on an actor: the same targets as here. (The tiny teacher's captions rarely parse, so
    its result may be empty.)"""
    vis, questions = uploads
    job = teacher_jobs.QuestionsJob(_teacher(tiny_zoo), vis[:16], questions[:16], 2, [0, 23, 1])
    [there] = replicas.run([job])
    assert _equal(teacher_jobs.run(job), there)


def test_teacher_replicas_label_blocks_that_merge_into_one_labelling(tiny_zoo, uploads, replicas):
    """One replica labels as this process does, bitwise. Two replicas each label a block; merged in upload
    order they give the same pseudo-labels and masks, and logits and hidden states within fp16 rounding of
    a batch of another size (measured: docs/results.md)."""
    vis, questions = uploads
    whole = teacher_jobs.run(teacher_jobs.LabelJob(_teacher(tiny_zoo), vis, questions, threads=2))
    [there] = replicas.run([teacher_jobs.LabelJob(_teacher(tiny_zoo), vis, questions, threads=2)])
    cut = teacher_jobs.blocks(len(questions), 2)
    halves = replicas.run([teacher_jobs.LabelJob(_teacher(tiny_zoo), vis[a:b], questions[a:b]) for a, b in cut])
    assert len(replicas.nodes) == 2
    assert _equal(whole, there)
    merged = akd.concat(halves)
    for k in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(whole[k], merged[k]), k
    for k in ("t_logits", "t_hidden"):
        assert torch.allclose(whole[k].float(), merged[k].float(), atol=2e-2, rtol=1e-2), k


def test_blocks_cut_rows_into_contiguous_parts():
    assert teacher_jobs.blocks(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert teacher_jobs.blocks(2, 4) == [(0, 1), (1, 2)] and teacher_jobs.blocks(0, 2) == []
    assert teacher_jobs.blocks(5, 0) == [(0, 5)]


def test_evaluation_on_an_actor_is_evaluation_here(tiny_zoo, replicas):
    """Any cloud job runs on any actor: evaluation jobs on the teacher's replicas, one each."""
    from fl_sim.cloud import eval_job
    from fl_sim.world.catalog import NO_DOMAINS

    sets = eval_job.TestSets(["source", "dusk"], 16, 0, None, NO_DOMAINS)
    path = str(tiny_zoo.paths["tiny-low"])
    _, init = model_cache.adapted_model(path, 4, True, "full")
    state = {k: v + 0.01 for k, v in init.items()}
    jobs = [eval_job.EvalJob(path, sets, (4, True, "full"), state), eval_job.EvalJob(str(tiny_zoo.paths["teacher"]),
                                                                                       sets)]
    assert replicas.run(jobs) == [eval_job.run(j) for j in jobs]


def test_a_cloud_the_cluster_cannot_hold_is_one_line(local_ray):
    with pytest.raises(FlSimError, match=r"teacher actors ask for 1 GPU and resource 'cloud'.*does not have"):
        actors.ActorGroup("teacher", 1, {"num_gpus": 1, "resources": {"cloud": 0.001}}).start()
    with pytest.raises(FlSimError, match=r"akd actors \(64 CPU, 0 GPU each\) did not start within 1 s"):
        actors.ActorGroup("akd", 1, {"num_cpus": 64}, start_timeout_s=1).start()


def test_the_capacity_check_counts_the_clouds_workers(monkeypatch):
    from fl_sim.app import capacity
    from fl_sim.app.preflight import cloud_workers
    from fl_sim.config import parse_config
    from fl_sim.plugins import STRATEGIES, get_strategy
    from strategies.cdcca import CDCCA

    assert {n for n in STRATEGIES if issubclass(get_strategy(n), CDCCA)} == {
        n for n, e in STRATEGIES.items() if "akd" in e.reads}
    monkeypatch.setattr("os.cpu_count", lambda: 2)

    def cfg(**over):
        return parse_config({"name": "x", "zoo": "tiny", "strategy": {"name": "cdcca"}}, over)

    # evaluation 2, teacher 1, AKD 2 on a 2-core CPU: the same two processes
    assert cloud_workers(cfg(), 3) == 2 and cloud_workers(cfg(**{"strategy.akd.workers": 5}), 3) == 5
    assert cloud_workers(cfg(**{"strategy.cloud_lag": 1}), 3) == 3  # every tier on an actor
    assert cloud_workers(cfg(**{"cloud.akd_cpus": 1}), 3) == 4  # AKD apart from teacher and evaluation
    assert cloud_workers(cfg(**{"strategy.name": "fedavg"}), 3) == 2
    assert cloud_workers(cfg(**{"cloud.teacher_gpus": 0.5, "simulation.device": "cuda"}), 3) == 1
    none = {"cloud.eval_actors": 0, "cloud.teacher_replicas": 0}
    for over in ({"strategy.akd.workers": 0}, {"strategy.name": "fedavg"}, {"simulation.device": "cuda"},
                 {"simulation.precision": "bf16"}, {"strategy.akd.steps": 0}):
        assert cloud_workers(cfg(**none, **over), 3) == 0, over
    base, more = (sum(capacity.needs(cfg(), 100, w)["memory"].values()) for w in (0, 2))
    assert more - base == pytest.approx(2 * (capacity.WORKER_BYTES + capacity.adapter_bytes(cfg())))
