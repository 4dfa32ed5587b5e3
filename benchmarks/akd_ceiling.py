"""What AKD can reach offline: a tier's adapters trained on plenty of teacher-labelled shifted data.

    python benchmarks/akd_ceiling.py [--tier phone-high|all|a,b] [--n 300] [--steps 600] [--lr 2e-3] [--words-only]

No fleet, no UTS, no DWC: ``--n`` train samples of each shifted domain (full images) are labelled by the
teacher once (``fl_sim.mechanisms.akd.teacher_targets``), then the tier's adapters train ``--steps`` AKD steps with
the default loss weights and source anchor (half of each batch from 512 labelled source samples), and
the result is evaluated on 100 test samples per domain. It runs twice per tier: adapters without and
with trainable word embeddings (``strategy.lora_tokens``), and prints VQA accuracy per domain, with the
teacher and the untrained tier for reference. With several tiers it also prints the mean over tiers (how
the fleet reports shifted accuracy) and the share of the teacher-device gap that mean closes: what the
fleet could close at best if every tier's adapters were trained this way.
"""

import argparse
import time

import numpy as np


def labelled_data(n: int) -> tuple:
    """``(zoo, teacher, shifted targets, source anchor targets)``, labelled by the teacher once."""
    import torch

    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd
    from fl_sim.models.mllm import visual_tokens
    from fl_sim.models.zoo import pretrain_zoo
    from fl_sim.world.domains import SHIFTED

    zoo = pretrain_zoo("default")
    pr = zoo.prompter
    teacher = model_cache.base_model(str(zoo.paths["teacher"]))
    with torch.no_grad():
        parts = []
        for d in SHIFTED:
            ds = model_cache.split(d, "train", n, 0, None)
            vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
            parts.append(akd.teacher_targets(teacher, pr, vis, list(ds["question"])))
        src = model_cache.split("source", "train", 512, 10_000, None)
        vis = visual_tokens(teacher, pr.pixels(np.asarray(src["image"])))
    anchor = akd.anchor_targets(pr, vis, list(src["question"]), list(src["answer"]),
                                teacher.config.text_config.vocab_size, teacher.config.text_config.hidden_size)
    return zoo, teacher, akd.concat(parts), anchor


def scores(model, pr) -> dict:
    """VQA accuracy (%) per domain on 100 test samples each, and ``shifted``, their mean over shifted domains."""
    from fl_sim.device import model_cache
    from fl_sim.models.evaluate import evaluate
    from fl_sim.world.domains import DOMAINS, SHIFTED

    res = evaluate(model, pr, {d: model_cache.split(d, "test", 100, 0, None) for d in DOMAINS})
    out = {d: 100 * res[d]["vqa"] for d in DOMAINS}
    out["shifted"] = float(np.mean([out[d] for d in SHIFTED]))
    return out


def run(data: tuple, tier: str, steps: int, lr: float, tokens: bool, seed: int = 0) -> dict:
    import torch

    from fl_sim.config import StrategyConfig
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd
    from fl_sim.models.adapters import load_adapter_state

    zoo, teacher, new, anchor = data
    pr = zoo.prompter
    model, init = model_cache.adapted_model(str(zoo.paths[tier]), StrategyConfig().lora_r, tokens)
    load_adapter_state(model, init)
    t_width = teacher.config.text_config.hidden_size
    cfg = akd.AKDConfig(steps=steps, lr=lr)
    torch.manual_seed(seed)
    align = torch.nn.Linear(model.config.text_config.hidden_size, t_width)
    rng = np.random.default_rng(seed)
    k_anchor = round(cfg.anchor * cfg.batch_size)

    def draw(step):
        batch = [akd.take(new, rng.choice(akd.size(new), size=cfg.batch_size - k_anchor, replace=False))]
        if k_anchor:
            batch.append(akd.take(anchor, rng.choice(akd.size(anchor), size=k_anchor, replace=False)))
        return akd.concat(batch)

    t0 = time.time()
    akd.train_adapters(model, align, draw, cfg, seed)
    seconds = time.time() - t0
    return scores(model, pr) | {"train_s": seconds}


def evaluate_base(data: tuple, name: str) -> dict:
    """``scores`` of an untrained tier (``source-only``) or of the teacher."""
    from fl_sim.device import model_cache

    zoo = data[0]
    return scores(model_cache.base_model(str(zoo.paths[name])), zoo.prompter)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tier", default="phone-high", help='a tier, several joined by commas, or "all"')
    ap.add_argument("--n", type=int, default=300, help="train samples per shifted domain")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--words-only", action="store_true", help="skip the adapters without word embeddings")
    args = ap.parse_args()
    from fl_sim.app.cli import quiet_libraries

    quiet_libraries()
    import torch

    from fl_sim.models.presets import get_zoo

    torch.set_num_threads(2)
    known = list(get_zoo("default").tiers)
    tiers = known if args.tier == "all" else args.tier.split(",")
    unknown = [t for t in tiers if t not in known]
    if unknown:
        raise SystemExit(f"akd_ceiling: unknown tier {unknown[0]!r}; allowed: {', '.join(known)} or all")
    variants = [("LoRA + projector + words", True)] if args.words_only else \
        [("LoRA + projector", False), ("LoRA + projector + words", True)]
    print(f"AKD offline: {args.n} teacher-labelled samples per shifted domain, {args.steps} steps, lr {args.lr}")
    print(f"  {'tier':<11} {'adapters':<28} {'source':>7} {'dusk':>7} {'novel':>7} {'digits':>7} {'shifted':>8} "
          f"{'train s':>8}")
    data = labelled_data(args.n)

    def row(tier, name, r, seconds=""):
        print(f"  {tier:<11} {name:<28} {r['source']:>7.1f} {r['dusk']:>7.1f} {r['novel']:>7.1f} {r['digits']:>7.1f} "
              f"{r['shifted']:>8.1f} {seconds:>8}")

    teacher = evaluate_base(data, "teacher")
    row("teacher", "(no adapters)", teacher)
    base, best = {}, {}
    for tier in tiers:
        base[tier] = evaluate_base(data, tier)
        row(tier, "(no adapters)", base[tier])
        for name, tokens in variants:
            r = run(data, tier, args.steps, args.lr, tokens)
            row(tier, name, r, f"{r['train_s']:.1f}")
            best.setdefault(name, {})[tier] = r["shifted"]
    if len(tiers) > 1:  # the fleet's figure: shifted accuracy as the mean over tiers, gap relative to no adapters
        b = float(np.mean([base[t]["shifted"] for t in tiers]))
        print(f"  mean over {len(tiers)} tiers: no adapters {b:.1f} % shifted, teacher {teacher['shifted']:.1f} %")
        for name, per_tier in best.items():
            m = float(np.mean(list(per_tier.values())))
            closed = 100 * (m - b) / (teacher["shifted"] - b)
            print(f"    {name:<28} {m:.1f} % shifted: {closed:.1f} % of the gap closed")


if __name__ == "__main__":
    main()
