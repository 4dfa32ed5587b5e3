"""Real int8 weights (torchao) against simulated int8 weights: memory, speed and answers of one tier.

    python benchmarks/lowbit.py [--zoo default] [--source teacher] [--n 100] [--repeats 5]

Two tiers are derived from the zoo's ``--source`` model with ``quantize = "int8"``: ``backend =
"simulated"`` (fp32 weights on the int8 grid, as the zoo's tiers) and ``backend = "torchao"`` (the
language model's linears as torchao int8 tensors; ``fl_sim.models.lowbit``). For each, with 2 torch
threads: the bytes its parameters occupy, the seconds of a device's inference on one round's 32 samples
(``answer_with_stats``, as UTS runs it), the seconds of one LoRA training step on them (forward and backward,
as a fedavg device or the cloud's AKD runs), and its answers on ``--n`` test samples of every built-in
domain: exact-match accuracy, and the share of answers the two give identically.
"""

import argparse
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--source", default="teacher", help="the zoo model the two int8 tiers derive from")
    ap.add_argument("--n", type=int, default=100, help="test samples per built-in domain")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions of each measurement")
    args = ap.parse_args()
    from fl_sim.app.cli import quiet_libraries

    quiet_libraries()
    from fl_sim.config import DerivedTier
    from fl_sim.device import model_cache
    from fl_sim.models import lowbit
    from fl_sim.models.adapters import AdapterConfig, add_adapters
    from fl_sim.models.mllm import answer_with_stats, load_mllm, visual_tokens
    from fl_sim.models.provider import derive_tier
    from fl_sim.models.train import per_sample_loss
    from fl_sim.models.zoo import pretrain_zoo
    from fl_sim.world.domains import DOMAINS

    zoo = pretrain_zoo(args.zoo)
    source = str(zoo.paths[args.source])
    pr = zoo.prompter
    torch.set_num_threads(2)
    round_ds = model_cache.split("source", "train", 64, 0, None).select(range(32))
    tests = {d: model_cache.split(d, "test", args.n, 0, None) for d in DOMAINS}
    answers, rows = {}, []
    for backend in ("simulated", "torchao"):
        path = derive_tier(f"int8-{backend}", DerivedTier(checkpoint=source, quantize="int8", backend=backend), None)
        model = load_mllm(path)
        mem = lowbit.weight_bytes(model)
        vis = visual_tokens(model, pr.pixels(np.asarray(round_ds["image"])))
        questions = list(round_ds["question"])
        answer_with_stats(model, pr, vis, questions, 8)  # warm-up
        t = time.time()
        for _ in range(args.repeats):
            answer_with_stats(model, pr, vis, questions, 8)
        infer = (time.time() - t) / args.repeats
        torch.manual_seed(0)
        peft = add_adapters(model, AdapterConfig())
        params = [p for p in peft.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        batch = pr.train_batch(questions, list(round_ds["answer"]))
        labels = batch.pop("labels")
        pixels = pr.pixels(np.asarray(round_ds["image"]))
        steps = []
        for _ in range(args.repeats + 1):
            t = time.time()
            loss = per_sample_loss(peft(**batch, pixel_values=pixels).logits, labels).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps.append(time.time() - t)
        got, correct = [], []
        peft.eval()
        with peft.disable_adapter():
            for ds in tests.values():
                v = visual_tokens(model, pr.pixels(np.asarray(ds["image"])))
                out, _ = answer_with_stats(model, pr, v, list(ds["question"]), 8)
                vqa = np.asarray(ds["family"]) != "caption"
                got += out
                correct += [a == b for a, b, q in zip(out, ds["answer"], vqa) if q]
        answers[backend] = got
        rows.append((backend, mem, infer, float(np.mean(steps[1:])), 100 * float(np.mean(correct))))
    same = 100 * np.mean([a == b for a, b in zip(answers["simulated"], answers["torchao"])])
    print(f"int8 tiers derived from the {args.zoo} zoo's {args.source}; 2 threads; {args.n} test samples per domain")
    print("| backend | parameter memory (MB) | inference, 32 samples (s) | LoRA step, 32 samples (s) "
          "| VQA exact match (%) |")
    print("|---|---|---|---|---|")
    for backend, mem, infer, step, acc in rows:
        print(f"| {backend} | {mem / 1e6:.2f} | {infer:.3f} | {step:.3f} | {acc:.1f} |")
    print(f"answers identical between the two: {same:.1f} %")


if __name__ == "__main__":
    main()
