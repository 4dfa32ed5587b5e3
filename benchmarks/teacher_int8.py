"""Teacher labelling with int8 dynamic quantisation (torch's own CPU backend) against fp32: time and labels.

    python benchmarks/teacher_int8.py [--n 200] [--zoo default]

``torch.ao.quantization.quantize_dynamic`` turns a copy of the teacher's linear layers into int8 ones
(weights int8 per channel, activations quantised on the fly). For ``--n`` train samples of every built-in
domain the cloud's labelling (``akd.teacher_targets``: greedy answers with their statistics, then logits and
hidden states on prompt + answer) runs once with each teacher. Printed: wall time of each, the share of
pseudo-labels the int8 teacher gives identically, and each teacher's exact-match accuracy (VQA questions).
"""

import argparse
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--zoo", default="default")
    args = ap.parse_args()
    from fl_sim.app.cli import quiet_libraries

    quiet_libraries()
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd
    from fl_sim.models.mllm import visual_tokens
    from fl_sim.models.zoo import pretrain_zoo
    from fl_sim.world.domains import DOMAINS

    zoo = pretrain_zoo(args.zoo)
    pr, teacher = zoo.prompter, zoo.teacher.eval()
    q8 = torch.ao.quantization.quantize_dynamic(teacher, {torch.nn.Linear}, dtype=torch.qint8)
    torch.set_num_threads(2)
    rows = {"fp32": [0.0, [], []], "int8": [0.0, [], []]}  # seconds, labels, correct
    for dom in DOMAINS:
        ds = model_cache.split(dom, "train", args.n, 0, None)
        vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
        questions, answers = list(ds["question"]), list(ds["answer"])
        vqa = np.asarray(ds["family"]) != "caption"
        for name, model in (("fp32", teacher), ("int8", q8)):
            t = time.time()
            targets = akd.teacher_targets(model, pr, vis, questions, 28)
            rows[name][0] += time.time() - t
            labels = akd.pseudo_labels(targets, pr)
            rows[name][1] += labels
            rows[name][2] += [lab == a for lab, a, v in zip(labels, answers, vqa) if v]
    same = np.mean([a == b for a, b in zip(rows["fp32"][1], rows["int8"][1])])
    n = len(rows["fp32"][1])
    print(f"{n} samples ({args.n} per domain, {', '.join(DOMAINS)}), zoo {args.zoo}, 2 threads")
    for name, (secs, _, correct) in rows.items():
        print(f"{name}: labelling {secs:.1f} s ({n / secs:.0f} samples/s), "
              f"VQA exact match {100 * np.mean(correct):.1f} %")
    print(f"int8 speed-up {rows['fp32'][0] / rows['int8'][0]:.2f}x; "
          f"pseudo-labels identical to fp32: {100 * same:.1f} %")


if __name__ == "__main__":
    main()
