"""The cloud's work side by side in worker processes (``strategy.akd.workers``) against one step after another.

    python benchmarks/cloud_workers.py [--zoo default] [--uploads 800] [--steps 100] [--threads 1 2]

One CD-CCA round's cloud work at the sizes of 100 devices a round (``--uploads`` dusk samples as the round's
uploads), each way timed and compared for bitwise equality with the one-after-the-other run with this
process's threads (what ``workers = 0`` does):

- the teacher: labelling the uploads (``akd.teacher_targets``) and asking its extra questions about them
  (``fl_sim.cloud.question_job``, 2 per upload), one after the other here, or the questions in a worker while
  this process labels, both single-threaded;
- AKD: one round's job for every tier of the zoo as the cloud builds it (``fl_sim.cloud.tier_job``: 512 earlier
  samples as the replay buffer, 512 source samples as the anchor; the default batch of 32 = 16 anchor +
  8 new + 8 replay, ``--steps`` steps), every tier here one after the other, or side by side in a
  ``fl_sim.cloud.worker_pool`` (one tier here, the others in workers) with ``--threads`` torch threads a job.
"""

import argparse
import time

import numpy as np
import torch

from fl_sim.cloud import question_job, tier_job, worker_pool
from fl_sim.config import AKDConfig, StrategyConfig
from fl_sim.device import model_cache
from fl_sim.mechanisms import akd
from fl_sim.models.mllm import visual_tokens
from fl_sim.models.zoo import pretrain_zoo


def targets(teacher, pr, domain: str, n: int, offset: int) -> dict:
    ds = model_cache.split(domain, "train", max(2000, n + offset), 0, None).select(range(offset, offset + n))
    with torch.no_grad():
        vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
    return akd.teacher_targets(teacher, pr, vis, list(ds["question"]))


def jobs_for(zoo, sources: dict, cfg: AKDConfig, threads: int) -> list:
    rng = np.random.default_rng(0)
    teacher_width = model_cache.base_model(str(zoo.paths["teacher"])).config.text_config.hidden_size
    out = []
    for tier in zoo.tiers:
        adapters = StrategyConfig(name="cdcca").adapters()  # the default LoRA rank, word embeddings, projector
        model, init = model_cache.adapted_model(str(zoo.paths[tier]), *adapters)
        torch.manual_seed(0)
        align = torch.nn.Linear(model.config.text_config.hidden_size, teacher_width)
        draws = [[("new", rng.choice(akd.size(sources["new"]), 8, replace=False)),
                  ("replay", rng.choice(akd.size(sources["replay"]), 8, replace=False)),
                  ("anchor", rng.choice(akd.size(sources["anchor"]), 16, replace=False))] for _ in range(cfg.steps)]
        table, plan = tier_job.plan_batches(draws, sources)
        out.append(tier_job.TierJob(str(zoo.paths[tier]), adapters, cfg, 7, init,
                                    {k: v.detach().clone() for k, v in align.state_dict().items()}, table, plan,
                                    threads=threads))
    return out


def same(a: list, b: list) -> bool:
    return all(torch.equal(x.cloud[k], y.cloud[k]) for x, y in zip(a, b) for k in x.cloud)


def differing(a: dict, b: dict) -> str:
    keys = [k for k in a if not torch.equal(a[k], b[k])]
    if not keys:
        return "bitwise the same"
    return "differ in " + ", ".join(f"{k} (max {(a[k].float() - b[k].float()).abs().max():.1e})" for k in keys)


def teacher_phase(zoo, pool, vis, questions, mine: int) -> None:
    """Labelling then extra questions here, against the questions in a worker while this process labels."""
    path = str(zoo.paths["teacher"])
    teacher, pr = model_cache.base_model(path), model_cache.prompter_for(path, None)

    def job(threads):
        return question_job.QuestionsJob(path, False, None, vis, questions, 2, [0, 23, 1], 28, threads)

    t = time.time()
    labelled = akd.teacher_targets(teacher, pr, vis, questions)
    t_label = time.time() - t
    more = question_job.run(job(mine))
    base = time.time() - t
    print(f"teacher, one after the other, {mine} threads: {base:.1f} s (labelling {t_label:.1f}, "
          f"{akd.size(more)} extra questions {base - t_label:.1f})")
    t = time.time()
    ticket = pool.submit(job(1))
    torch.set_num_threads(1)
    labelled_1 = akd.teacher_targets(teacher, pr, vis, questions)
    torch.set_num_threads(mine)
    t_label = time.time() - t
    more_1 = pool.collect(ticket)
    wall = time.time() - t
    print(f"teacher, questions in a worker while this process labels, 1 thread each: {wall:.1f} s "
          f"({base / wall:.2f}x; labelling {t_label:.1f}); labels {differing(labelled, labelled_1)}; "
          f"extra questions {differing(more, more_1)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--uploads", type=int, default=800)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    zoo = pretrain_zoo(args.zoo)
    pr = zoo.prompter
    teacher = model_cache.base_model(str(zoo.paths["teacher"]))
    ds = model_cache.split("dusk", "train", max(2000, args.uploads), 0, None).select(range(args.uploads))
    with torch.no_grad():
        vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
    sources = {"new": targets(teacher, pr, "dusk", args.uploads, 0), "replay": targets(teacher, pr, "dusk", 512, 1000),
               "anchor": targets(teacher, pr, "source", 512, 0)}
    sources["anchor"]["distil"] = torch.zeros(512)
    cfg = AKDConfig(steps=args.steps)
    mine = torch.get_num_threads()
    pool = worker_pool.CloudPool()
    pool.grow(len(zoo.tiers) - 1)
    warm = jobs_for(zoo, sources, cfg.model_copy(update={"steps": 2}), 1)
    for j in warm:
        j.plan = j.plan[:2]
    pool.run(warm)  # workers started and their models loaded
    print(f"{len(zoo.tiers)} tiers, {args.steps} steps of 32, {args.uploads} uploads; this process has {mine} threads")
    pool.collect(pool.submit(question_job.QuestionsJob(str(zoo.paths["teacher"]), False, None, vis[:4],
                                                       list(ds["question"])[:4], 2, [0], 28)))  # warm
    teacher_phase(zoo, pool, vis, list(ds["question"]), mine)
    t = time.time()
    ref = [tier_job.run(j) for j in jobs_for(zoo, sources, cfg, mine)]
    base = time.time() - t
    print(f"AKD, one after the other, {mine} threads: {base:.1f} s "
          f"({', '.join(f'{r.seconds:.1f}' for r in ref)} per tier)")
    for threads in args.threads:
        jobs = jobs_for(zoo, sources, cfg, threads)
        t = time.time()
        res = pool.run(jobs)
        wall = time.time() - t
        print(f"AKD, side by side, {threads} thread(s) a job: {wall:.1f} s ({base / wall:.2f}x; "
              f"{', '.join(f'{r.seconds:.1f}' for r in res)} per tier); adapters bitwise as one after the other "
              f"with {mine} threads: {'yes' if same(ref, res) else 'no'}")
    pool.close()


if __name__ == "__main__":
    main()
