"""Regions: what a tier whose tower is not the teacher's uploads, per model family, and what the teacher reads.

Question: a device of another family cannot send the teacher its visual tokens; it sends the pixels of the
image regions its kept tokens encode (``strategy.uts.upload = "regions"``, the default for such tiers). How
many bytes is that per uploaded sample against the whole image, and how much does the teacher lose reading
the masked image instead of the whole one?

    python -m benchmarks regions [--zoo default] [--n 100] [--keep 0.5] [--hidden 64] [--layers 2]

For each family (``experiments/make_tiny_checkpoints.py``'s tiny checkpoints with ``--hidden`` x ``--layers``
decoders; the zoo's phone tier as the LLaVA row), on ``--n`` test samples of every built-in domain: the
family's visual tokens of each image, the ``--keep`` share kept by UTS's novelty score (against the family's
own mean token), the regions of those tokens (``Family.token_boxes``) as a pixel mask, and the upload
(``uts.encode_upload(pixel_mask=...)``). Printed per family: visual tokens per image, the share of pixels
uploaded, bytes per uploaded sample (mask and pixels; the whole image is 6,912 bytes), and the zoo teacher's
accuracy on the reassembled masked images against the whole images (exact match, every VQA question).
The families' weights are random, so which tokens they keep is not what a trained model would keep; the
geometry (how many pixels a kept token costs) is each family's own.
"""

import tempfile
from pathlib import Path

SMOKE = ["--zoo", "tiny", "--n", "6"]
FAMILIES = ("idefics3", "qwen2-vl", "gemma3", "llava-onevision", "clip-llama")


def add_arguments(ap) -> None:
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--n", type=int, default=100, help="test samples per built-in domain")
    ap.add_argument("--keep", type=float, default=0.5, help="share of visual tokens kept (strategy.uts.keep_tokens)")
    ap.add_argument("--hidden", type=int, default=64, help="the families' decoder width")
    ap.add_argument("--layers", type=int, default=2, help="the families' decoder depth")


def run(args) -> None:
    from benchmarks.lib import quiet

    quiet()
    import numpy as np
    import torch

    from benchmarks.model_size import _maker
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import uts
    from fl_sim.models.families import family_of
    from fl_sim.models.mllm import answer, visual_tokens
    from fl_sim.models.zoo import pretrain_zoo
    from fl_sim.world.domains import DOMAINS

    zoo = pretrain_zoo(args.zoo)
    teacher, pr_t = zoo.teacher, model_cache.prompter_for(str(zoo.paths["teacher"]), None)
    data = [model_cache.split(d, "test", args.n, 0, None) for d in DOMAINS]
    vqa = [np.flatnonzero(np.asarray(ds["family"]) != "caption") for ds in data]
    images = np.concatenate([np.asarray(ds["image"])[i] for ds, i in zip(data, vqa)]).astype(np.uint8)
    questions = np.concatenate([np.asarray(ds["question"])[i] for ds, i in zip(data, vqa)])
    answers = np.concatenate([np.asarray(ds["answer"])[i] for ds, i in zip(data, vqa)])

    def accuracy(imgs) -> float:
        return float(np.mean([p == a for p, a in zip(answer(teacher, pr_t, imgs, questions), answers)]))

    whole = accuracy(images)
    maker, out = _maker(), Path(tempfile.mkdtemp(prefix="fl-sim-regions-"))
    paths = {"llava (zoo tier)": str(zoo.paths[next(iter(zoo.tiers))])}
    paths |= {f: str(maker.build(f, out / f, args.hidden, args.layers)) for f in FAMILIES}
    print(f"{len(images)} samples ({args.n} a domain, VQA questions), whole image {images[0].nbytes} bytes; "
          f"the teacher on whole images: {100 * whole:.1f} %")
    print("| family | visual tokens | pixels uploaded | bytes per sample | of the whole image | teacher on masked |")
    print("|---|---|---|---|---|---|")
    for name, path in paths.items():
        model, pr = model_cache.base_model(path), model_cache.prompter_for(path, None)
        with torch.no_grad():
            vis = visual_tokens(model, pr.pixels(images))
        keep = uts.select_tokens(uts.token_uncertainty_novelty(vis, model_cache.reference_token(path, None)),
                                 args.keep)
        pixels = uts.region_mask(keep, family_of(model).token_boxes(model, vis.shape[1]), *images.shape[1:3])
        up = uts.encode_upload([[1]] * len(images), images=images, pixel_mask=pixels)
        masked = uts.decode_upload(up, vis.shape[1], 1, 2, None, images.shape[1:])["images"]
        per = (up["region_mask"].nbytes + up["region_pixels"].nbytes) / len(images)
        print(f"| {name} | {vis.shape[1]} | {100 * pixels.mean():.1f} % | {per:.0f} | "
              f"{100 * per / images[0].nbytes:.1f} % | {100 * accuracy(masked):.1f} % |", flush=True)
