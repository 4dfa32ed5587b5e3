"""Throughput where the hardware is: what the fleet and the cloud get done per unit of time here.

    python benchmarks/hardware.py [--zoo default] [--rounds 3] [--device auto|cpu|cuda] [--gpus-per-client G]
                                  [--no-fleet]

Prints, for the chosen device (``simulation.device``; with ``--gpus-per-client G > 0`` the virtual clients
share the GPUs too, G of one each):
- device-rounds per minute of the quickstart fleet (``experiments/quickstart.toml``, ``--rounds`` rounds)
  with ``fedavg`` and with ``cdcca``, over the rounds' wall time (not with ``--no-fleet``, which times the
  cloud's passes alone and needs neither Flower nor Ray: for a machine that has torch and transformers only);
- teacher labelling, samples per second (``akd.teacher_targets``: greedy answers plus the logits and hidden
  states AKD distils, on uploaded visual tokens);
- cloud AKD steps per second (``akd.train_adapters`` on phone-high at the default batch size);
- peak memory of this process and its children (Ray workers included), and of the GPUs (all processes),
  sampled every 0.5 s.
"""

import argparse
import tempfile
import time

import numpy as np
import psutil
from peak_memory import PeakMemory


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto", help="simulation.device: auto, cpu, cuda")
    ap.add_argument("--gpus-per-client", type=float, default=0.0, help="simulation.num_gpus_per_client")
    ap.add_argument("--precision", default="auto", help="simulation.precision: auto, fp32, bf16")
    ap.add_argument("--no-fleet", action="store_true", help="skip the Flower fleets: the cloud's passes only")
    args = ap.parse_args()
    with PeakMemory() as mem:
        measure(args)
    print(f"peak memory (this process + Ray workers): {mem.peak / 2**30:.2f} GiB; "
          f"GPU (all processes): {mem.gpu_peak / 2**30:.2f} GiB")


def measure(args) -> None:
    from fl_sim.app.cli import quiet_libraries

    quiet_libraries()
    import torch

    from fl_sim.config import AKDConfig
    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd
    from fl_sim.models import placement
    from fl_sim.models.mllm import visual_tokens
    from fl_sim.models.zoo import pretrain_zoo

    torch.set_num_threads(min(torch.get_num_threads(), psutil.cpu_count() or 1))
    out = tempfile.mkdtemp(prefix="fl-sim-hw-")
    device = placement.use(args.device, args.precision)
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"hardware: {psutil.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CUDA {'available' if torch.cuda.is_available() else 'not available'}; server models on {device}{gpu}, "
          f"devices' models on {'GPU shares of ' + str(args.gpus_per_client) if args.gpus_per_client else 'the CPU'}"
          f", precision {args.precision}")
    if not args.no_fleet:
        fleets(args, out)

    zoo = pretrain_zoo(args.zoo)
    pr = zoo.prompter
    teacher = model_cache.base_model(str(zoo.paths["teacher"]))
    ds = model_cache.split("dusk", "train", 256, 0, None)
    vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
    questions = list(ds["question"])
    akd.teacher_targets(teacher, pr, vis[:8], questions[:8])  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    targets = akd.teacher_targets(teacher, pr, vis, questions)
    sync()
    label_s = time.perf_counter() - t0
    print(f"teacher labelling: {len(questions)} samples in {label_s:.1f} s = {len(questions) / label_s:.1f} samples/s")

    tier = "phone-high" if "phone-high" in zoo.tiers else next(iter(zoo.tiers))
    cfg = AKDConfig(steps=30)
    model, _ = model_cache.adapted_model(str(zoo.paths[tier]))
    align = torch.nn.Linear(model.config.text_config.hidden_size, teacher.config.text_config.hidden_size).to(device)
    rng = np.random.default_rng(0)

    def draw(step):
        return akd.take(targets, rng.choice(akd.size(targets), size=cfg.batch_size, replace=False))

    akd.train_adapters(model, align, draw, cfg.model_copy(update={"steps": 2}), seed=0)  # warm-up
    sync()
    t0 = time.perf_counter()
    akd.train_adapters(model, align, draw, cfg, seed=0)
    sync()
    akd_s = time.perf_counter() - t0
    print(f"cloud AKD ({tier}, batch {cfg.batch_size}): {cfg.steps} steps in {akd_s:.1f} s = "
          f"{cfg.steps / akd_s:.2f} steps/s")


def fleets(args, out: str) -> None:
    """Device-rounds per minute of the quickstart fleet with fedavg and with cdcca."""
    from fl_sim.app.run import run_experiment
    from fl_sim.callbacks.results_file import read_results
    from fl_sim.config import load_config

    sim = {"simulation.device": args.device, "simulation.precision": args.precision,
           "simulation.num_gpus_per_client": args.gpus_per_client}
    for strategy in ("fedavg", "cdcca"):
        cfg = load_config("experiments/quickstart.toml", {"strategy.name": strategy, "rounds": args.rounds,
                                                          "zoo": args.zoo, "output_dir": out, **sim})
        res = read_results(run_experiment(cfg))
        done, wall = sum(r["participants"] for r in res), sum(r["wall_s"]["round"] for r in res)
        print(f"{strategy:<7} quickstart: {done} device-rounds in {wall:.1f} s of rounds = {60 * done / wall:.0f} "
              f"device-rounds per minute")


if __name__ == "__main__":
    main()
