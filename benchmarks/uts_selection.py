"""What UTS stage 1 uploads: question families, and how often device and teacher answer the picks right.

    python benchmarks/uts_selection.py [--n 400] [--budget 0.125] [--zoo default]

For each shifted domain (train split, ``--n`` samples) and device tier, three stage-1 rankings at the same
budget: the paper's (product of token confidences, one global ranking), the default (per-token
confidence, budget shared by question type) and random. Printed per ranking: the share of captions among
the picks, and on the VQA picks the device's and the teacher's exact-match accuracy.
"""

import argparse

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--budget", type=float, default=0.125)
    ap.add_argument("--zoo", default="default")
    args = ap.parse_args()
    from fl_sim.app.cli import quiet_libraries

    quiet_libraries()
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import uts
    from fl_sim.models.mllm import answer_with_stats, visual_tokens
    from fl_sim.models.zoo import pretrain_zoo
    from fl_sim.world.domains import SHIFTED

    zoo = pretrain_zoo(args.zoo)
    pr = zoo.prompter
    print(f"UTS stage 1, budget {args.budget}, {args.n} train samples per domain "
          "(captions = share of picks; device / teacher = exact match on the VQA picks)")
    for dom in SHIFTED:
        ds = model_cache.split(dom, "train", args.n, 0, None)
        px, qs, ans = pr.pixels(np.asarray(ds["image"])), list(ds["question"]), list(ds["answer"])
        vqa = np.asarray(ds["family"]) != "caption"
        t_out, _ = answer_with_stats(zoo.teacher, pr, visual_tokens(zoo.teacher, px), qs, max_new_tokens=28)
        t_ok = np.array([o == a for o, a in zip(t_out, ans)])
        for tier, model in zoo.tiers.items():
            out, stats = answer_with_stats(model, pr, visual_tokens(model, px), qs, max_new_tokens=28)
            ok = np.array([o == a for o, a in zip(out, ans)])
            rng = np.random.default_rng(0)
            picks = {
                "paper": uts.stage1(stats, qs, "confidence", args.budget, rng),
                "default": uts.stage1(stats, qs, "confidence", args.budget, rng, normalize=True, stratify=True),
                "random": uts.stage1(stats, qs, "random", args.budget, rng),
            }
            cells = []
            for name, sel in picks.items():
                v = sel[vqa[sel]]
                acc = (lambda x: f"{100 * x[v].mean():4.0f}" if len(v) else "   -")  # noqa: B023 - used at once
                cells.append(f"{name} captions {100 * np.mean(~vqa[sel]):3.0f} % device {acc(ok)} teacher {acc(t_ok)}")
            print(f"{dom:7s} {tier:11s} all: device {100 * ok[vqa].mean():3.0f} "
                  f"teacher {100 * t_ok[vqa].mean():3.0f} | "
                  + " | ".join(cells))


if __name__ == "__main__":
    main()
