"""Where devices lag the cloud under DWC: the cloud copy minus the weights devices hold, per kind of tensor.

    python benchmarks/dwc_lag.py runs/paired/cdcca-0 [--round 10] [--evaluate]

Reads a CD-CCA run's checkpoint (``cloud.<tier>`` and ``held.<tier>`` groups) and prints, per tier and per
kind of adapter tensor (LoRA A / B of each linear, summed over layers; the projector; the word
embeddings), the number of values, the RMS per value of ``cloud - held`` (what error feedback still owes
the devices) and the RMS per value of ``cloud`` itself. A dense downlink shows zeros. The checkpoint keeps
the last two rounds. ``--evaluate`` also evaluates both adapter sets of every tier as the fleet does (the
run's test sets, tier-share-weighted): what devices score, and what they would score if the downlink had
delivered the cloud copy exactly.
"""

import argparse
import re
from pathlib import Path


def kind(name: str) -> str:
    if "token" in name:
        return "embeddings"
    if "projector" in name:
        return "projector"
    m = re.search(r"\.(\w+)\.(lora_[AB])\.", name)
    return f"{m.group(2)} {m.group(1)}" if m else name


def main() -> None:
    from safetensors.torch import load_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--round", type=int, default=None, help="checkpoint round (default: the last)")
    ap.add_argument("--evaluate", action="store_true", help="also evaluate the held and the cloud adapters")
    args = ap.parse_args()
    rounds = sorted((args.run_dir / "checkpoint").glob("round-*"))
    if not rounds:
        raise SystemExit(f"no checkpoint in {args.run_dir}")
    ck = args.run_dir / "checkpoint" / f"round-{args.round:05d}" if args.round else rounds[-1]
    tiers = sorted(p.name[len("cloud."):-len(".safetensors")] for p in ck.glob("cloud.*.safetensors"))
    if not tiers:
        raise SystemExit(f"{ck} holds no CD-CCA cloud copies (is it a cdcca run, and is the round kept?)")
    print(f"{ck}: RMS per value of cloud - held (lag) and of cloud")
    print(f"{'tier':<12} {'tensor':<14} {'values':>7} {'lag':>8} {'cloud':>8} {'lag/cloud':>9}")
    for tier in tiers:
        cloud, held = load_file(str(ck / f"cloud.{tier}.safetensors")), load_file(str(ck / f"held.{tier}.safetensors"))
        acc: dict[str, list[float]] = {}
        for k, c in cloud.items():
            a = acc.setdefault(kind(k), [0, 0.0, 0.0])
            a[0] += c.numel()
            a[1] += float((c.float() - held[k].float()).pow(2).sum())
            a[2] += float(c.float().pow(2).sum())
        for name, (n, lag2, c2) in sorted(acc.items()):
            print(f"{tier:<12} {name:<14} {n:>7} {(lag2 / n) ** .5:>8.4f} {(c2 / n) ** .5:>8.4f} "
                  f"{(lag2 / c2) ** .5:>9.3f}")
    if args.evaluate:
        evaluate_both(args.run_dir, ck, tiers)


def evaluate_both(run_dir: Path, ck: Path, tiers: list[str]) -> None:
    import json

    from safetensors.torch import load_file

    from fl_sim.config import load_run_config
    from fl_sim.models.zoo import pretrain_zoo
    from fl_sim.server.evaluation import evaluate_adapters
    from fl_sim.world.domains import DOMAINS, SHIFTED

    cfg = load_run_config(run_dir / "config.toml")
    paths = {k: str(v) for k, v in pretrain_zoo(cfg.zoo, seed=cfg.zoo_seed, cache_dir=cfg.cache_dir).paths.items()}
    fleet_tiers = [p["tier"] for p in json.loads((run_dir / "fleet.json").read_text())]
    print(f"\naccuracy (%), tier-share-weighted, {cfg.eval.n_test} test samples per domain")
    print(f"{'adapters':<10} " + " ".join(f"{d:>8}" for d in [*DOMAINS, "shifted"]))
    for group in ("held", "cloud"):
        states = {tier: load_file(str(ck / f"{group}.{tier}.safetensors")) for tier in tiers}
        by = evaluate_adapters(cfg, paths, states, fleet_tiers)["acc"]
        shifted = sum(by[d] for d in SHIFTED) / len(SHIFTED)
        print(f"{group:<10} " + " ".join(f"{100 * by[d]:>8.1f}" for d in DOMAINS) + f" {100 * shifted:>8.1f}")


if __name__ == "__main__":
    main()
