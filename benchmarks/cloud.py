"""Cloud: CD-CCA's cloud in one process, on Ray actors, and lagging a round, against fedavg's throughput.

Question: does moving the cloud (teacher, the tiers' AKD, evaluation) onto Ray actors cost throughput, how
much does ``strategy.cloud_lag = 1`` win back, and how far apart are the teacher's targets when its replicas
label blocks of a round's uploads instead of one process labelling them all?

    python -m benchmarks cloud [--devices 10000] [--per-round 100] [--rounds 5] [--zoo default] [--runs 1]
                               [--skip-throughput] [--skip-replicas]

Throughput: ``python -m benchmarks scale --no-plain`` (each in a fresh process) for fedavg, then cdcca with
the cloud in one process (``cloud.teacher_replicas = 0``, ``cloud.eval_actors = 0``, ``strategy.akd.workers
= 0``), on actors (the defaults), and on actors with ``strategy.cloud_lag = 1``; ``--runs N`` repeats the
four in turn N times (interleaved, so a slow spell of the machine hits all four). Prints device-rounds per
minute over the rounds (each round's wall time with its callbacks), peak RSS, and each as a share of fedavg's.
Targets (10,000 devices, 100 per round): actors >= one process; lagging >= 75 % of fedavg.

Replicas: the teacher labels ``--uploads`` ``dusk`` samples in one job (2 threads), then in 2, 3 and 4
contiguous blocks (1 thread each, as replicas do), merged in order; prints which targets are bitwise equal
and the largest difference of the others.
"""

import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.lib import markdown_table, quiet, run_benchmark

SMOKE = ["--zoo", "tiny", "--devices", "4", "--per-round", "2", "--rounds", "2", "--uploads", "12"]

SETUPS = {
    "fedavg": ["--strategy", "fedavg"],
    "cdcca, cloud in one process": ["--strategy", "cdcca", "--set", "cloud.teacher_replicas=0", "--set",
                                    "cloud.eval_actors=0", "--set", "strategy.akd.workers=0"],
    "cdcca, cloud on actors": ["--strategy", "cdcca"],
    "cdcca, cloud on actors, cloud_lag = 1": ["--strategy", "cdcca", "--set", "strategy.cloud_lag=1"],
}


def add_arguments(ap) -> None:
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--runs", type=int, default=1, help="interleaved repetitions of the four setups")
    ap.add_argument("--uploads", type=int, default=96, help="samples the teacher labels in the replica check")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-replicas", action="store_true")


def run(args) -> None:
    if not args.skip_replicas:
        replicas(args)
    if not args.skip_throughput:
        throughput(args)


def throughput(args) -> None:
    got: dict[str, list[dict]] = {name: [] for name in SETUPS}
    with tempfile.TemporaryDirectory(prefix="fl-sim-bench-cloud-") as tmp:
        for i in range(args.runs):
            for k, (name, extra) in enumerate(SETUPS.items()):
                out = Path(tmp) / f"{i}-{k}.json"
                run_benchmark("scale", "--no-plain", "--zoo", args.zoo, "--devices", str(args.devices), "--per-round",
                              str(args.per_round), "--rounds", str(args.rounds), "--json", str(out), *extra)
                got[name].append(json.loads(out.read_text()))
    base = statistics.median(f["device_rounds_per_min"] for f in got["fedavg"])
    rows = []
    for name, runs in got.items():
        rate = [f["device_rounds_per_min"] for f in runs]
        rows.append([name, " / ".join(f"{r:.0f}" for r in rate), f"{100 * statistics.median(rate) / base:.1f} %",
                     f"{max(f['peak_rss_gib'] for f in runs):.2f}",
                     " / ".join(f"{sum(f['round_s']):.0f}" for f in runs)])
    print(f"\n{args.devices} devices, {args.per_round} per round, {args.rounds} rounds, zoo {args.zoo}, "
          f"{args.runs} interleaved run(s)")
    print(markdown_table(["setup", "device-rounds/min (each run)", "of fedavg (median)", "peak RSS GiB",
                          "rounds' wall s"], rows))
    print("targets: cloud on actors >= cloud in one process; cloud_lag = 1 >= 75 % of fedavg")


def replicas(args) -> None:
    quiet(threads=2)
    import numpy as np
    import torch

    from fl_sim.cloud import teacher_jobs
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd
    from fl_sim.models.mllm import visual_tokens
    from fl_sim.models.zoo import pretrain_zoo
    from fl_sim.world.catalog import NO_DOMAINS

    path = str(pretrain_zoo(args.zoo).paths["teacher"])
    pr, teacher = model_cache.prompter_for(path, None), model_cache.base_model(path)
    ds = model_cache.split("dusk", "train", max(256, args.uploads), 0, None).select(range(args.uploads))
    with torch.no_grad():
        vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
    t = teacher_jobs.Teacher(path, False, None, NO_DOMAINS, 12)
    qs = list(ds["question"])
    whole = teacher_jobs.run(teacher_jobs.LabelJob(t, vis, qs, threads=2))
    rows = []
    for parts in (2, 3, 4):
        cut = teacher_jobs.blocks(len(qs), parts)
        merged = akd.concat([teacher_jobs.run(teacher_jobs.LabelJob(t, vis[a:b], qs[a:b])) for a, b in cut])
        equal = [k for k in whole if torch.equal(whole[k], merged[k])]
        diff = {k: float((whole[k].float() - merged[k].float()).abs().max()) for k in whole if k not in equal}
        rows.append([parts, ", ".join(equal), ", ".join(f"{k} {v:.2g}" for k, v in diff.items()) or "none"])
    print(f"teacher replicas: {args.uploads} uploads of dusk, zoo {args.zoo}, against one job with 2 threads")
    print(markdown_table(["replicas", "bitwise equal", "largest |difference| of the others"], rows))
