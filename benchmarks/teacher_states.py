"""Teacher targets with the states taken from the generation against a second forward pass.

    python benchmarks/teacher_states.py [--zoo default] [--samples 800] [--domain dusk] [--device cpu]

``akd.teacher_targets`` greedily answers every upload, then needs the teacher's logits and last hidden
states on ``prompt + answer`` for distillation. ``strategy.akd.teacher_states = "forward"`` runs a second
pass over those sequences; ``"generation"`` (the default) keeps them from the generation (its prefill, its
decode steps and one more cached step). Prints the time of each (the same uploads, each timed after a
warm-up, in alternating order, twice), whether pseudo-labels, sequences and confidences are the same, and
how far the logits and hidden states the losses read differ (fraction of fp16 values bitwise equal,
largest difference, KL between the two softmaxes).
"""

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--samples", type=int, default=800)
    ap.add_argument("--domain", default="dusk")
    ap.add_argument("--device", default="cpu", help="simulation.device: auto, cpu, cuda")
    args = ap.parse_args()

    from fl_sim.app.cli import quiet_libraries

    quiet_libraries()
    import torch
    import torch.nn.functional as F

    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd
    from fl_sim.models import placement
    from fl_sim.models.mllm import visual_tokens
    from fl_sim.models.zoo import pretrain_zoo

    device = placement.use(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    zoo = pretrain_zoo(args.zoo)
    pr = zoo.prompter
    teacher = model_cache.base_model(str(zoo.paths["teacher"]))
    ds = model_cache.split(args.domain, "train", args.samples, 0, None)
    vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
    qs = list(ds["question"])
    out, times = {}, {"generation": [], "forward": []}
    for states in times:
        akd.teacher_targets(teacher, pr, vis[:8], qs[:8], states=states)  # warm-up
    for states in ("generation", "forward", "forward", "generation"):
        sync()
        t0 = time.perf_counter()
        out[states] = akd.teacher_targets(teacher, pr, vis, qs, states=states)
        sync()
        times[states].append(time.perf_counter() - t0)
    g, f = out["generation"], out["forward"]
    print(f"{len(qs)} {args.domain} uploads on {device}: states from the generation "
          f"{' / '.join(f'{t:.2f}' for t in times['generation'])} s, second forward pass "
          f"{' / '.join(f'{t:.2f}' for t in times['forward'])} s "
          f"({min(times['forward']) / min(times['generation']):.2f}x)")
    same = {k: torch.equal(g[k], f[k]) for k in ("input_ids", "attention_mask", "labels", "t_conf")}
    print("pseudo-labels and sequences the same:", all(same[k] for k in ("input_ids", "attention_mask", "labels")),
          "| confidences the same:", same["t_conf"])
    mask = f["attention_mask"].bool()
    ans = torch.zeros_like(mask)
    ans[:, :-1] = f["labels"][:, 1:] != -100  # positions whose logits predict an answer token (the KL's)
    for name, key, where in (("logits at answer-predicting positions", "t_logits", ans),
                             ("hidden states at non-pad positions", "t_hidden", mask)):
        a, b = f[key][where].float(), g[key][where].float()
        print(f"{name}: {(a == b).float().mean():.2%} of {a.numel():,} fp16 values bitwise equal, "
              f"largest difference {(a - b).abs().max():.2e} (largest value {a.abs().max():.1f})")
    a, b = f["t_logits"][ans].float(), g["t_logits"][ans].float()
    kl = F.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    print(f"KL(forward || generation) per answer position: largest {kl.max():.1e}")


if __name__ == "__main__":
    main()
