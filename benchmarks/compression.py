"""Compression: UTS uplink bytes per device round and DWC downlink bytes per payload, on real models.

Question: how many bytes does a device's upload take with UTS (against raw images and every visual token), and
how small is a DWC downlink payload (against a dense fp32 delta and the device checkpoint), at what error and
encode/decode time?

    python -m benchmarks compression [--zoo default] [--tier phone-high] [--rounds 4] [--akd-steps N]
                                     (--rounds 0: uplink only)

Uplink: one device round of 32 ``dusk`` samples through the tier's model; serialized Flower bytes of
the upload for raw images (the baseline), every visual token, and UTS at its defaults and variants.
Downlink: ``--rounds`` rounds of AKD (the default steps per round, or ``--akd-steps``) on teacher-labelled
``dusk`` uploads; each round's adapter change is compressed with every DWC setting (error feedback on) and its
serialized payload (what it adds to a device's message: a ``bytes`` value in its task record, as the downlink
sends it) compared with a dense fp32 delta (packed into one ``bytes`` value, sent the same way) and with the
device checkpoint.
Encode/decode times are per payload.
"""

from benchmarks.lib import Timer, quiet

SMOKE = ["--zoo", "tiny", "--tier", "tiny-high", "--rounds", "1", "--akd-steps", "5"]


def _packed_bytes(arrays) -> int:
    """Arrays as uploads are sent: packed into one ``bytes`` value (``fl_sim.protocol.records.packed_record``)."""
    from flwr.app import RecordDict

    from fl_sim.protocol.records import packed_record, payload_bytes

    return payload_bytes(RecordDict({"x": packed_record(arrays)}))


def _downlink_bytes(payload: bytes) -> int:
    """What a DWC payload adds to the message of a device one version behind (a one-payload chain in
    its task record, as ``strategies/cdcca.py`` sends and counts it)."""
    from fl_sim.protocol.records import config_value_bytes

    return config_value_bytes("dwc_chain", [payload])


def add_arguments(ap) -> None:
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--tier", default="phone-high")
    ap.add_argument("--rounds", type=int, default=4, help="AKD rounds for the downlink figures (0: uplink only)")
    ap.add_argument("--akd-steps", type=int, default=None, help="AKD steps per round (default: akd.steps' default)")


def run(args) -> None:
    quiet(threads=2)
    import numpy as np
    import torch

    from fl_sim.cache import read_meta
    from fl_sim.config import StrategyConfig
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd, dwc, uts
    from fl_sim.models.adapters import adapter_state, load_adapter_state
    from fl_sim.models.families import base
    from fl_sim.models.mllm import answer_with_stats, visual_tokens
    from fl_sim.models.zoo import pretrain_zoo
    from fl_sim.protocol.records import pack_arrays

    zoo = pretrain_zoo(args.zoo)
    pr, tier = zoo.prompter, args.tier
    strategy = StrategyConfig()  # the default adapters: LoRA rank, projector, word embeddings
    model, init = model_cache.adapted_model(str(zoo.paths[tier]), *strategy.adapters())
    ref = model_cache.reference_token(str(zoo.paths["teacher"]), None)
    ds = model_cache.split("dusk", "train", 2000, 0, None)

    print("UTS uplink, one device round of 32 samples (serialized Flower bytes):")
    rows = ds.select(range(32))
    vis = visual_tokens(model, pr.pixels(np.asarray(rows["image"])))
    _, stats = answer_with_stats(model, pr, vis, rows["question"], 28)
    q = [pr.words(x) for x in rows["question"]]
    raw = _packed_bytes(uts.encode_upload(q, images=np.asarray(rows["image"])))
    variants = {"raw images (baseline)": raw,
                "every token, float16": _packed_bytes(uts.encode_upload(q, vis=vis, token_bits=16)),
                "every token, int8": _packed_bytes(uts.encode_upload(q, vis=vis))}
    rng = np.random.default_rng(0)
    d = uts.UTSConfig()  # stage 1 as the defaults: per-token confidence, budget shared by question type
    for budget, keep, bits in ((0.25, 0.5, 4), (0.25, 0.5, 8), (0.125, 0.5, 8), (0.125, 0.5, 4), (0.125, 1.0, 8),
                               (0.125, 0.375, 8), (0.125, 0.25, 8), (0.25, 1.0, 2), (0.5, 0.5, 2), (0.25, 0.5, 2)):
        kept = uts.stage1(stats, rows["question"], d.method, budget, rng, d.normalize, d.stratify)
        v = vis[torch.as_tensor(kept)]
        mask = uts.select_tokens(uts.token_uncertainty_novelty(v, ref), keep)
        name = f"UTS budget {budget}, tokens {keep}, {bits} bit"
        if (budget, keep, bits) == (d.budget, d.keep_tokens, d.token_bits):
            name += " (default)"
        variants[name] = _packed_bytes(uts.encode_upload([q[i] for i in kept], vis=v, mask=mask, token_bits=bits))
    for name, b in variants.items():
        print(f"  {name:<46} {b:>9,d} B   {raw / b:6.1f}x smaller than raw")

    if args.rounds <= 0:
        return
    teacher = model_cache.base_model(str(zoo.paths["teacher"]))
    checkpoint = int(read_meta(zoo.paths[tier])["device_bytes"])
    settings = {"dense fp32": dict(select=False, quantize=False), "top-k 5% only": dict(quantize=False),
                "quantise only (3 bit)": dict(select=False), "top-k 5% + 8 bit": dict(bits=8),
                "top-k 5% + 4 bit": dict(bits=4), "top-k 5% + 3 bit": {}, "top-k 5% + 2 bit": dict(bits=2),
                "top-k 4.5% + 3 bit": dict(max_density=0.045), "top-k 4% + 3 bit": dict(max_density=0.04),
                "top-k 2% + 3 bit": dict(max_density=0.02),
                "blocks of 8, 5% + 3 bit": dict(block=8), "blocks of 16, 5% + 3 bit": dict(block=16)}
    settings = {k: {"max_density": 0.05, "bits": 3} | v for k, v in settings.items()}  # caps and bits spelled out
    settings = {k + (" (default)" if dwc.DWCConfig(**v) == dwc.DWCConfig() else ""): v for k, v in settings.items()}
    feedback = {k: dwc.ErrorFeedback(dwc.DWCConfig(**v)) for k, v in settings.items()}
    figures = {k: [] for k in settings}
    align = torch.nn.Linear(base(model).config.text_config.hidden_size, teacher.config.text_config.hidden_size)
    load_adapter_state(model, init)
    akd_cfg = akd.AKDConfig() if args.akd_steps is None else akd.AKDConfig(steps=args.akd_steps)
    for r in range(args.rounds):
        rows = ds.select(range(100 + 64 * r, 164 + 64 * r))
        tg = akd.teacher_targets(teacher, pr, visual_tokens(teacher, pr.pixels(np.asarray(rows["image"]))),
                                 list(rows["question"]))
        before = adapter_state(model)
        akd.train_adapters(model, align, lambda s, tg=tg: akd.take(tg, rng.choice(64, 32, replace=False)),
                           akd_cfg, seed=r)
        after = adapter_state(model)
        delta = {k: after[k] - before[k] for k in after}
        dense = _downlink_bytes(pack_arrays({k: v.numpy() for k, v in delta.items()}).tobytes())
        for name, ef in feedback.items():
            target = dwc.flatten({k: v + ef.residual[k] if ef.residual and ef.cfg.error_feedback else v
                                   for k, v in delta.items()}).astype(np.float64)  # what the payload encodes
            with Timer() as encode:
                payload, sent = ef.step(delta)
            with Timer() as decode:
                dwc.decode(payload, delta)
            b = _downlink_bytes(payload)
            got = dwc.flatten(sent).astype(np.float64)
            kept = got != 0
            err = ((got - target)[kept] ** 2).sum() / max((target[kept] ** 2).sum(), 1e-30)
            h, pos = dwc.parse_header(payload)
            rest = len(payload) - pos - h["index_bytes"] - h["value_bytes"]
            sections = (pos, h["index_bytes"], h["value_bytes"], rest)
            figures[name].append((b, dense / b, checkpoint / b, encode.s, decode.s, err, h["k"], *sections))
    print(f"\nDWC downlink, {tier} adapters ({sum(v.numel() for v in init.values()):,d} values), "
          f"device checkpoint {checkpoint:,d} B, mean over {args.rounds} AKD rounds:")
    print("  (kept err: squared error of the kept entries over their energy; sections: header / indices / "
          "values / scales bytes, the rest of the payload column is Flower's framing; "
          "kept: entries, whole blocks included)")
    print(f"  {'setting':<28} {'payload B':>10} {'vs dense':>9} {'vs ckpt':>8} {'encode ms':>10} {'decode ms':>10} "
          f"{'kept err':>9} {'kept':>7}  sections")
    for name, f in figures.items():
        a = np.mean(np.array(f), 0)
        print(f"  {name:<28} {a[0]:>10,.0f} {a[1]:>8.1f}x {a[2]:>7.1f}x {1e3 * a[3]:>10.1f} {1e3 * a[4]:>10.1f} "
              f"{a[5]:>9.4f} {a[6]:>7,.0f}  {' / '.join(f'{v:,.0f}' for v in a[7:])}")

