"""The tiers' AKD round side by side in worker processes (``strategy.akd.workers``) against one after the other.

    python benchmarks/parallel_akd.py [--zoo default] [--uploads 800] [--steps 100] [--threads 1 2]

Builds one round's AKD jobs for every tier of the zoo as CD-CCA's cloud does (``fl_sim.tier_job``: teacher
targets of ``--uploads`` dusk samples as the round's uploads, 512 earlier ones as the replay buffer, 512
source samples as the anchor; the default batch of 32 = 16 anchor + 8 new + 8 replay, ``--steps`` steps)
and prints the wall time of the round: every tier in this process one after the other (the cloud with
``workers = 0``), and side by side in a ``fl_sim.cloud_pool`` (one tier in this process, the others in
workers), each job with ``--threads`` torch threads. It says whether each way trained bitwise the same
adapters as the one-after-the-other run with this process's threads, which is what ``workers = "auto"``
must give.
"""

import argparse
import time

import numpy as np
import torch

from fl_sim import akd, cloud_pool, runtime, tier_job
from fl_sim.config import AKDConfig, StrategyConfig
from fl_sim.models.mllm import visual_tokens
from fl_sim.models.zoo import pretrain_zoo


def targets(teacher, pr, domain: str, n: int, offset: int) -> dict:
    ds = runtime.split(domain, "train", max(2000, n + offset), 0, None).select(range(offset, offset + n))
    with torch.no_grad():
        vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
    return akd.teacher_targets(teacher, pr, vis, list(ds["question"]))


def jobs_for(zoo, sources: dict, cfg: AKDConfig, threads: int) -> list:
    rng = np.random.default_rng(0)
    teacher_width = runtime.base_model(str(zoo.paths["teacher"])).config.text_config.hidden_size
    out = []
    for tier in zoo.tiers:
        adapters = StrategyConfig(name="cdcca").adapters()  # the default LoRA rank, word embeddings, projector
        model, init = runtime.adapted_model(str(zoo.paths[tier]), *adapters)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--uploads", type=int, default=800)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    zoo = pretrain_zoo(args.zoo)
    pr = zoo.prompter
    teacher = runtime.base_model(str(zoo.paths["teacher"]))
    sources = {"new": targets(teacher, pr, "dusk", args.uploads, 0), "replay": targets(teacher, pr, "dusk", 512, 1000),
               "anchor": targets(teacher, pr, "source", 512, 0)}
    sources["anchor"]["distil"] = torch.zeros(512)
    cfg = AKDConfig(steps=args.steps)
    mine = torch.get_num_threads()
    pool = cloud_pool.CloudPool()
    pool.grow(len(zoo.tiers) - 1)
    warm = jobs_for(zoo, sources, cfg.model_copy(update={"steps": 2}), 1)
    for j in warm:
        j.plan = j.plan[:2]
    pool.run(warm)  # workers started and their models loaded
    print(f"{len(zoo.tiers)} tiers, {args.steps} steps of 32, {args.uploads} uploads; this process has {mine} threads")
    t = time.time()
    ref = [tier_job.run(j) for j in jobs_for(zoo, sources, cfg, mine)]
    base = time.time() - t
    print(f"one after the other, {mine} threads: {base:.1f} s ({', '.join(f'{r.seconds:.1f}' for r in ref)} per tier)")
    for threads in args.threads:
        jobs = jobs_for(zoo, sources, cfg, threads)
        t = time.time()
        res = pool.run(jobs)
        wall = time.time() - t
        print(f"side by side, {threads} thread(s) a job: {wall:.1f} s ({base / wall:.2f}x; "
              f"{', '.join(f'{r.seconds:.1f}' for r in res)} per tier); adapters bitwise as one after the other "
              f"with {mine} threads: {'yes' if same(ref, res) else 'no'}")
    pool.close()


if __name__ == "__main__":
    main()
