"""How much a device tier's accuracy depends on its seed: one zoo preset's tier trained on `source` at several
seeds, on the zoo's own front-end and vocabulary (or an experiment's, with --domains), scored on `source`.

    python experiments/tier_seeds.py --role phone-low --seeds 0 1 2
    python experiments/tier_seeds.py --role phone-low --seeds 0 1 --domains experiments/textures.toml

The front-end is the zoo's cached one (pretrained first if missing); only the tier's own weights and
sample order follow the seed, so the spread is the recipe's, not the front-end's. The tier always trains
from scratch here, with --domains too (a zoo with user domains re-fits its tiers instead: REFIT_SHARE in
fl_sim/models/zoo.py). About 2-4 minutes a seed for the default zoo's tiers on 2 CPU cores.
"""

import argparse
import tempfile
from pathlib import Path

from fl_sim.config.files import load_config
from fl_sim.models.evaluate import evaluate
from fl_sim.models.mllm import Prompter, load_mllm
from fl_sim.models.presets import get_zoo
from fl_sim.models.zoo import _train_model, pretrain_zoo
from fl_sim.world.catalog import NO_DOMAINS, catalog_of
from fl_sim.world.data import load_split
from fl_sim.world.tokenizer import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--role", default="phone-low")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--domains", default=None, help="an experiment whose datasets on disk set the vocabulary")
    ap.add_argument("--n-test", type=int, default=300)
    args = ap.parse_args()
    catalog = catalog_of(load_config(args.domains)) if args.domains else NO_DOMAINS
    zoo = pretrain_zoo(args.zoo, roles={"teacher", args.role}, catalog=catalog)  # loads the cached teacher
    preset = get_zoo(args.zoo)
    tokenizer = load_tokenizer(catalog=catalog)
    test = {"source": load_split("source", "test", args.n_test, 0, 16, None)}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as out:
            meta = _train_model(Path(out), args.role, preset.tiers[args.role], preset, zoo.paths["frontend"], 16,
                                seed, tokenizer, None, catalog=catalog)
            scores = evaluate(load_mllm(out, tokenizer), Prompter(tokenizer), test)["source"]
        by_family = ", ".join(f"{k} {100 * v:.1f}" for k, v in scores.items() if k not in ("vqa", "bleu"))
        print(f"{args.role} seed {seed}: final loss {meta['train']['final_loss_ema']:.3f}, "
              f"source {100 * scores['vqa']:.1f} % ({by_family})", flush=True)


if __name__ == "__main__":
    main()
