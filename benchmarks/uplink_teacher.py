"""How well the teacher answers from what UTS uploads: exact match on shifted-domain VQA samples.

    python benchmarks/uplink_teacher.py [--n 120] [--zoo default]

For each shifted domain (train split, ``--n`` samples, captions excluded from the score) the teacher
answers from the shared front-end's visual tokens as the cloud decodes them from an upload: every token
(fp32, int8, 4 bit, 2 bit) or the novelty-kept half (4 bit, int8, 2 bit; dropped tokens filled with the
mean token, as the cloud does). Pseudo-labels and extra questions come from these answers.
"""

import argparse

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
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
    ref = model_cache.reference_token(str(zoo.paths["teacher"]), None)

    def uploaded(vis, mask, bits):
        arrays = uts.encode_upload([[1]] * len(vis), vis, mask, token_bits=bits)
        return uts.decode_upload(arrays, vis.shape[1], vis.shape[2], 2, ref)["vis"]

    print(f"teacher exact match (%) on {args.n} train samples per shifted domain (VQA only), from the upload")
    for dom in SHIFTED:
        ds = model_cache.split(dom, "train", args.n, 0, None)
        qs, ans = list(ds["question"]), list(ds["answer"])
        vqa = np.asarray(ds["family"]) != "caption"
        with torch.no_grad():
            vis = visual_tokens(zoo.teacher, pr.pixels(np.asarray(ds["image"])))
        every = torch.ones(vis.shape[:2], dtype=torch.bool)
        half = uts.select_tokens(uts.token_uncertainty_novelty(vis, ref), 0.5)
        cells = []
        for name, v in (("every fp32", vis), ("every int8", uploaded(vis, every, 8)),
                        ("every 4 bit", uploaded(vis, every, 4)), ("every 2 bit", uploaded(vis, every, 2)),
                        ("half 4 bit", uploaded(vis, half, 4)), ("half int8", uploaded(vis, half, 8)),
                        ("half 2 bit", uploaded(vis, half, 2))):
            out, _ = answer_with_stats(zoo.teacher, pr, v, qs, max_new_tokens=28)
            ok = np.array([o == a for o, a in zip(out, ans)])
            cells.append(f"{name} {100 * ok[vqa].mean():5.1f}")
        print(f"  {dom:7s} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
