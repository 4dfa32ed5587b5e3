"""Model size: what a model's size costs, one device round and one cloud AKD step per model, with peak RSS.

Question: how do a device round and a cloud AKD step grow with the model, up to a checkpoint larger than the
zoo's, and how much memory does each process need?

    python -m benchmarks model_size [--zoo default] [--hidden 512] [--layers 8] [--steps 5] [--models NAMES]
    python -m benchmarks model_size --models idefics3,qwen2-vl,gemma3,llava-onevision,clip-llama --hidden 256

Models: the zoo's device tiers and its teacher, each as a device tier, and a larger checkpoint built here
(the zoo's front-end and tokenizer under a ``--hidden`` x ``--layers`` Phi decoder, random weights: time and
memory do not depend on the values), passed to the fleet as a local checkpoint directory, the way a user's
own model is (``--models``: some of them, by name: a tier, ``teacher``, ``large``), and the model families
fl-sim runs (``fl_sim.models.families``): a tiny random checkpoint of each family with the same ``--hidden`` x
``--layers`` decoder and its own processor (``experiments/make_tiny_checkpoints.py``: idefics3, qwen2-vl, gemma3,
llava-onevision, clip-llama, siglip-qwen2), so their costs compare at similar parameter counts; a family reads
text and images its own way, so the cloud step distils the teacher's pseudo-labels into its own tokens with
pooled features. For each model, in a fresh
process of its own (``python -m benchmarks model_size --one ...``, so its peak RSS is its own):

- **device round**: one ``cdcca`` device round (``clients.cdcca_device.run_cdcca_round``: answers and
  uncertainty on the round's samples, UTS, the upload) and one ``fedavg`` device round
  (``clients.local_training.run_local_round``: local adapter training and its update), on a device of that
  tier, the strategies' default settings, 2 torch threads;
- **cloud AKD step**: the seconds per step of ``fl_sim.mechanisms.akd.train_adapters`` on the model as the student
  (the teacher's targets for one AKD batch of source samples, the strategy's default batch).

Printed: parameters, fp32 size, seconds of each, and the peak RSS of each process (``ru_maxrss``: the
device process holds the student only, the cloud process the teacher too).
"""

import argparse
import json
import resource
import tempfile
from pathlib import Path

from benchmarks.lib import (
    Timer,
    device_env,
    plain_device_round,
    plain_strategy,
    quiet,
    run_benchmark,
    table_header,
    table_row,
)

SMOKE = ["--zoo", "tiny", "--models", "large", "--hidden", "32", "--layers", "1", "--steps", "1"]


def _maker():
    """``experiments/make_tiny_checkpoints.py``: tiny random checkpoints of every model family."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "experiments" / "make_tiny_checkpoints.py"
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoints", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_large(zoo, hidden: int, layers: int, out: Path) -> Path:
    """A Phi decoder of ``hidden`` x ``layers`` on the zoo's front-end, saved as a checkpoint directory."""
    import torch
    from transformers import SiglipVisionModel

    from fl_sim.models.mllm import build_mllm
    from fl_sim.models.presets import ModelPreset, get_zoo
    from fl_sim.world.tokenizer import load_tokenizer

    preset = ModelPreset(role="device", hidden=hidden, layers=layers, heads=max(1, hidden // 64), steps=1)
    torch.manual_seed(0)
    model = build_mllm(preset, get_zoo(zoo.name).frontend, 16, load_tokenizer(None))
    model.model.vision_tower.load_state_dict(SiglipVisionModel.from_pretrained(zoo.paths["frontend"]).state_dict())
    model.save_pretrained(out)
    return out


def measure(path: str, teacher: str, kind: str, steps: int) -> dict:
    """In this process: ``kind`` = "device" (a cdcca and a fedavg device round) or "cloud" (AKD steps)."""
    quiet(threads=2)
    import numpy as np
    import torch

    from fl_sim.config import parse_config
    from fl_sim.models.mllm import count_params

    out = tempfile.mkdtemp(prefix="fl-sim-size-")
    figures = {}
    if kind == "device":
        from fl_sim.device import model_cache

        for name in ("cdcca", "fedavg"):
            cfg = parse_config({"name": name, "output_dir": out, "rounds": 1,
                                "models": {"teacher": teacher, "tiers": {"m": path}},
                                "fleet": {"num_devices": 4}, "strategy": {"name": name, "clients_per_round": 4}})
            s = plain_strategy(cfg)
            env = device_env(s)
            for timed in (False, True):  # the first round loads model, data and partitions: not the round's cost
                with Timer() as t:
                    plain_device_round(s, env, 0, 1)
                if timed:
                    figures[f"{name}_round_s"] = t.s
        figures["params"] = count_params(model_cache.base_model(path))
    else:
        from fl_sim.device import model_cache
        from fl_sim.mechanisms import akd
        from fl_sim.models.adapters import load_adapter_state
        from fl_sim.models.mllm import visual_tokens

        cfg = parse_config({"name": "cloud", "output_dir": out, "rounds": 1,
                            "models": {"teacher": teacher, "tiers": {"m": path}},
                            "fleet": {"num_devices": 4}, "strategy": {"name": "cdcca", "clients_per_round": 4}})
        a = cfg.strategy.akd
        ds = model_cache.split("source", "train", cfg.fleet.train_size, 0, None).select(range(a.batch_size))
        t_model, pr = model_cache.base_model(teacher), model_cache.prompter_for(teacher, None)
        with torch.no_grad():
            vis = visual_tokens(t_model, pr.pixels(np.asarray(ds["image"])))
        targets = akd.teacher_targets(t_model, pr, vis, list(ds["question"]), a.max_new_tokens)
        model, init = model_cache.adapted_model(path, *cfg.strategy.adapters())
        student = model_cache.prompter_for(path, None)
        if student.identity != pr.identity or not model_cache.same_view(teacher, path, None):  # its own view
            with torch.no_grad():
                own = visual_tokens(model, student.pixels(np.asarray(ds["image"])))
            targets = akd.student_targets(student, own, list(ds["question"]), targets, akd.pseudo_labels(targets, pr))
        align = torch.nn.Linear(model.config.get_text_config().hidden_size,
                                t_model.config.get_text_config().hidden_size)
        akd.train_adapters(model, align, lambda step: targets, a, 0, steps=1)  # warm-up: first-call costs
        with Timer() as t:
            akd.train_adapters(model, align, lambda step: targets, a, 0, steps=steps)
        figures["akd_step_s"] = t.s / steps
        load_adapter_state(model, init)
    figures["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    return figures


def add_arguments(ap) -> None:
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--hidden", type=int, default=512, help="the larger checkpoint's decoder width")
    ap.add_argument("--layers", type=int, default=8, help="the larger checkpoint's decoder depth")
    ap.add_argument("--steps", type=int, default=5, help="timed AKD steps per model (after one warm-up step)")
    ap.add_argument("--models", default=None,
                    help="comma-separated: zoo tiers, teacher, large (default: every tier, the teacher, large)")
    ap.add_argument("--one", nargs=3, metavar=("PATH", "TEACHER", "KIND"), help=argparse.SUPPRESS)


def run(args) -> None:
    if args.one:  # a child: one model, one kind, in this fresh process
        print(json.dumps(measure(*args.one, args.steps)))
        return
    quiet()
    from fl_sim.models.zoo import pretrain_zoo

    zoo = pretrain_zoo(args.zoo)
    teacher = str(zoo.paths["teacher"])
    names = args.models.split(",") if args.models else [*zoo.tiers, "teacher", "large"]
    maker = _maker()
    families = [f for f in maker.FAMILIES if f != "paligemma"]
    known = {name: str(zoo.paths[name]) for name in zoo.tiers} | {"teacher": teacher, "large": None}
    known |= {f: None for f in families}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--models: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    models = {name: known[name] for name in names}
    if "large" in models:
        big = f"phi-{args.hidden}x{args.layers}"
        models[big] = str(build_large(zoo, args.hidden, args.layers, Path(tempfile.mkdtemp(prefix="fl-sim-big-"))))
        del models["large"]
    for f in families:
        if f in models:
            models[f] = str(maker.build(f, Path(tempfile.mkdtemp(prefix=f"fl-sim-{f}-")), args.hidden, args.layers))
    print(table_header(["model", "params", "fp32 MB", "cdcca device round (s)", "fedavg device round (s)",
                        "device peak RSS (GiB)", "AKD step (s)", "cloud peak RSS (GiB)"]), flush=True)
    for name, path in models.items():
        row = {}
        for kind in ("device", "cloud"):
            res = run_benchmark("model_size", "--one", path, teacher, kind, "--steps", str(args.steps),
                                capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise SystemExit(f"{name}, {kind}: the child failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
            row[kind] = json.loads(res.stdout.strip().splitlines()[-1])
        d, c = row["device"], row["cloud"]
        print(table_row([name, f"{d['params'] / 1e6:.2f} M", f"{4 * d['params'] / 1e6:.1f}",
                         f"{d['cdcca_round_s']:.2f}", f"{d['fedavg_round_s']:.2f}", f"{d['peak_rss_gib']:.2f}",
                         f"{c['akd_step_s']:.3f}", f"{c['peak_rss_gib']:.2f}"]), flush=True)
