"""How much of a user domain's answers a vision front-end's tokens tell: stage A+'s answer classifier
(`fl_sim/models/answer_head.py`) trained on the domain's train split over a front-end, frozen or trained
with it, and scored on the test samples `fl-sim evaluate` draws (normalised match, by question type).

    python experiments/probe_tower.py experiments/textures.toml                  # the experiment's zoo front-end
    python experiments/probe_tower.py experiments/textures.toml --plain          # the default zoo's (stage A only)
    python experiments/probe_tower.py experiments/textures.toml --plain --tower-lr 2e-3 --epochs 30

Frozen (the default), the probe bounds what a model reading those tokens can learn of the domain; with
--tower-lr the tower trains too, without stage A+'s anchor: what the architecture can learn of it.
"""

import argparse
import time

import numpy as np
import torch

from fl_sim.config.files import load_config
from fl_sim.models.answer_head import AnswerHead, answer_classes
from fl_sim.models.mllm import Prompter
from fl_sim.models.zoo import pretrain_zoo
from fl_sim.world.answers import normalise
from fl_sim.world.catalog import NO_DOMAINS, catalog_of
from fl_sim.world.tokenizer import load_tokenizer


def rows(ds) -> list[dict]:
    cols = {k: ds[k] for k in ("image", "question", "answer", "family")}
    return [{k: v[i] for k, v in cols.items()} for i in range(len(ds))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment")
    ap.add_argument("--plain", action="store_true", help="the zoo's front-end without the experiment's data")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--tower-lr", type=float, default=0.0, help="0: the tower stays frozen")
    ap.add_argument("--n-test", type=int, default=300)
    args = ap.parse_args()
    cfg = load_config(args.experiment)
    catalog = catalog_of(cfg)
    from transformers import SiglipVisionModel

    zoo = pretrain_zoo(cfg.zoo, roles={"teacher"}, catalog=NO_DOMAINS if args.plain else catalog)
    tower = SiglipVisionModel.from_pretrained(zoo.paths["frontend"])
    prompter = Prompter(load_tokenizer(catalog=catalog))
    for domain in catalog.names():
        train = rows(catalog.load(domain, "train", 10**12, cfg.seed, 16))
        test = rows(catalog.load(domain, "test", args.n_test, cfg.seed, 16))
        torch.manual_seed(0)
        head = AnswerHead(tower.config.hidden_size, prompter.n_visual, len(prompter.tok),
                          answer_classes([s["answer"] for s in train]))
        known = head.known(train)
        tower.requires_grad_(args.tower_lr > 0)
        groups = [{"params": list(head.parameters())}]
        if args.tower_lr:
            groups.append({"params": list(tower.parameters()), "lr": args.tower_lr})
        opt = torch.optim.AdamW(groups, lr=2e-3, weight_decay=1e-4)
        rng, t0 = np.random.default_rng(0), time.time()
        tower.train(args.tower_lr > 0)
        for _ in range(args.epochs):
            for batch in np.array_split(rng.permutation(len(known)), max(1, len(known) // 64)):
                loss = head.loss(tower, prompter, [known[i] for i in batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
        tower.eval()
        names = list(head.classes)
        with torch.no_grad():
            pred = [names[p] for p in head.logits(tower, prompter, test).argmax(-1).tolist()]
        hit = [p == normalise(str(s["answer"])) for p, s in zip(pred, test)]
        kinds = {str(s["family"]) for s in test}
        by_kind = ", ".join(f"{k} {100 * np.mean([h for h, s in zip(hit, test) if str(s['family']) == k]):.1f}"
                            for k in sorted(kinds))
        where = "plain" if args.plain else "the experiment's"
        mode = f"trained at {args.tower_lr:g}" if args.tower_lr else "frozen"
        print(f"{domain}: {where} front-end, {mode}, {args.epochs} epochs: {100 * np.mean(hit):.1f} % "
              f"({by_kind}; {time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
