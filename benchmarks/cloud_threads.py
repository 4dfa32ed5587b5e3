"""Would the cloud gain from running its work in parallel processes? Its two kernels, by thread and process.

    python benchmarks/cloud_threads.py [--zoo default] [--samples 128] [--steps 20] [--tier phone-high]

CD-CCA's cloud runs in the driver, one step after another: teacher labelling (``akd.teacher_targets``)
then each tier's AKD (``akd.train_adapters``), on torch's intra-op threads. This prints, for each kernel,
its wall time in one process with 1 thread and with all the machine's cores as threads, and the wall time
of two processes of 1 thread each running the same kernel at once (what splitting the work across
processes, e.g. two tiers' AKD side by side, would take for twice the work). A parallel speed-up of
``2 x t(1 thread) / t(2 processes)`` over ``t(1 thread) / t(all threads)`` says how much processes would
gain over threads.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def prepare(zoo_name: str, which: str, samples: int, steps: int, tier: str, threads: int):
    """A call that runs ``which`` ("label" or "akd") once with ``threads`` torch threads (warmed up)."""
    import numpy as np
    import torch

    from fl_sim.config import AKDConfig
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd
    from fl_sim.models.mllm import visual_tokens
    from fl_sim.models.zoo import pretrain_zoo

    torch.set_num_threads(threads)
    zoo = pretrain_zoo(zoo_name)
    pr = zoo.prompter
    teacher = model_cache.base_model(str(zoo.paths["teacher"]))
    ds = model_cache.split("dusk", "train", max(256, samples), 0, None).select(range(samples))
    with torch.no_grad():
        vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
    questions = list(ds["question"])
    akd.teacher_targets(teacher, pr, vis[:8], questions[:8])  # warm-up
    if which == "label":
        return lambda: akd.teacher_targets(teacher, pr, vis, questions)
    targets = akd.teacher_targets(teacher, pr, vis, questions)
    cfg = AKDConfig(steps=steps)
    model, _ = model_cache.adapted_model(str(zoo.paths[tier]))
    align = torch.nn.Linear(model.config.text_config.hidden_size, teacher.config.text_config.hidden_size)
    rng = np.random.default_rng(0)

    def draw(step):
        return akd.take(targets, rng.choice(akd.size(targets), size=min(cfg.batch_size, samples), replace=False))

    akd.train_adapters(model, align, draw, cfg.model_copy(update={"steps": 2}), seed=0)  # warm-up
    return lambda: akd.train_adapters(model, align, draw, cfg, seed=0)


def child(args, which: str, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--zoo", args.zoo, "--samples", str(args.samples), "--steps", str(args.steps),
           "--tier", args.tier, "--one", which, "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"a measurement process failed (exit {proc.wait()})")
    return proc


def start(procs: list[subprocess.Popen]) -> None:
    """Every prepared process runs its timed kernel now (they overlap from their first step)."""
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()


def seconds(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"a measurement process failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])["s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--samples", type=int, default=128, help="uploads the teacher labels (and AKD draws from)")
    ap.add_argument("--steps", type=int, default=20, help="AKD steps")
    ap.add_argument("--tier", default="phone-high")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child's own measurement
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        from fl_sim.app.cli import quiet_libraries

        quiet_libraries()
        run = prepare(args.zoo, args.one, args.samples, args.steps, args.tier, args.threads)
        print("ready", flush=True)
        sys.stdin.readline()
        t0 = time.perf_counter()
        run()
        print(json.dumps({"s": time.perf_counter() - t0}))
        return
    cores = os.cpu_count() or 1
    what = {"label": f"teacher labelling, {args.samples} samples", "akd": f"AKD, {args.tier}, {args.steps} steps"}
    for which, name in what.items():
        timed = []
        for procs in ([child(args, which, 1)], [child(args, which, cores)], [child(args, which, 1) for _ in range(2)]):
            start(procs)
            timed.append(max(seconds(p) for p in procs))
        one, many, both = timed
        print(f"{name}: 1 thread {one:.1f} s, {cores} threads {many:.1f} s (speed-up {one / many:.2f}); "
              f"2 processes x 1 thread at once {both:.1f} s for twice the work (speed-up {2 * one / both:.2f})",
              flush=True)


if __name__ == "__main__":
    main()
