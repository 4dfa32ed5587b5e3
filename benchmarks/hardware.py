"""Hardware: device-rounds per minute per strategy, and the cloud's passes per second, on this machine.

Question: what do the fleet and the cloud get done per unit of time where the hardware is (CPU, or GPU)?

    python -m benchmarks hardware [--zoo default] [--rounds 3] [--device auto|cpu|cuda] [--gpus-per-client G]
                                  [--precision auto|fp32|bf16] [--no-fleet] [--devices N] [--per-round K]
                                  [--strategies fedavg,cdcca] [--samples 256] [--akd-steps 30]
    e.g. python -m benchmarks hardware --device cuda --gpus-per-client 0.25

Prints, for the chosen device (``simulation.device``; with ``--gpus-per-client G > 0`` the virtual clients
share the GPUs too, G of one each):
- device-rounds per minute of the quickstart fleet (``experiments/quickstart.toml``, ``--rounds`` rounds;
  ``--devices`` / ``--per-round`` change its size) with ``fedavg`` and with ``cdcca`` (``--strategies``), over
  the rounds' wall time (not with ``--no-fleet``, which times the cloud's passes alone and needs neither Flower
  nor Ray: for a machine that has torch and transformers only);
- teacher labelling, samples per second (``akd.teacher_targets``: greedy answers plus the logits and hidden
  states AKD distils, on ``--samples`` uploaded visual tokens);
- cloud AKD steps per second (``akd.train_adapters`` on phone-high at the default batch size, ``--akd-steps``);
- peak memory of this process and its children (Ray workers included), and of the GPUs (all processes),
  sampled every 0.5 s.
"""

import tempfile

import psutil

from benchmarks.lib import REPO, PeakMemory, Timer, gib, quiet

SMOKE = ["--zoo", "tiny", "--rounds", "1", "--devices", "4", "--per-round", "2", "--strategies", "cdcca",
         "--samples", "16", "--akd-steps", "2"]


def add_arguments(ap) -> None:
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto", help="simulation.device: auto, cpu, cuda")
    ap.add_argument("--gpus-per-client", type=float, default=0.0, help="simulation.num_gpus_per_client")
    ap.add_argument("--precision", default="auto", help="simulation.precision: auto, fp32, bf16")
    ap.add_argument("--no-fleet", action="store_true", help="skip the Flower fleets: the cloud's passes only")
    ap.add_argument("--devices", type=int, default=None, help="fleet.num_devices (default: the quickstart's)")
    ap.add_argument("--per-round", type=int, default=None,
                    help="strategy.clients_per_round (default: the quickstart's)")
    ap.add_argument("--strategies", default="fedavg,cdcca", help="the fleets' strategies, comma-separated")
    ap.add_argument("--samples", type=int, default=256, help="samples the teacher labels")
    ap.add_argument("--akd-steps", type=int, default=30, help="timed cloud AKD steps")


def run(args) -> None:
    with PeakMemory() as mem:
        measure(args)
    print(f"peak memory (this process + Ray workers): {gib(mem.peak):.2f} GiB; "
          f"GPU (all processes): {gib(mem.gpu_peak):.2f} GiB")


def measure(args) -> None:
    quiet()
    import numpy as np
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
    ds = model_cache.split("dusk", "train", max(256, args.samples), 0, None).select(range(args.samples))
    vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
    questions = list(ds["question"])
    akd.teacher_targets(teacher, pr, vis[:8], questions[:8])  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with Timer(sync) as label:
        targets = akd.teacher_targets(teacher, pr, vis, questions)
    print(f"teacher labelling: {len(questions)} samples in {label.s:.1f} s = {len(questions) / label.s:.1f} samples/s")

    tier = "phone-high" if "phone-high" in zoo.tiers else next(iter(zoo.tiers))
    cfg = AKDConfig(steps=args.akd_steps)
    model, _ = model_cache.adapted_model(str(zoo.paths[tier]))
    align = torch.nn.Linear(model.config.text_config.hidden_size, teacher.config.text_config.hidden_size).to(device)
    rng = np.random.default_rng(0)
    batch = min(cfg.batch_size, akd.size(targets))

    def draw(step):
        return akd.take(targets, rng.choice(akd.size(targets), size=batch, replace=False))

    akd.train_adapters(model, align, draw, cfg.model_copy(update={"steps": 2}), seed=0)  # warm-up
    with Timer(sync) as steps:
        akd.train_adapters(model, align, draw, cfg, seed=0)
    print(f"cloud AKD ({tier}, batch {batch}): {cfg.steps} steps in {steps.s:.1f} s = "
          f"{cfg.steps / steps.s:.2f} steps/s")


def fleets(args, out: str) -> None:
    """Device-rounds per minute of the quickstart fleet with each strategy (fedavg and cdcca)."""
    from fl_sim.app.run import run_experiment
    from fl_sim.callbacks.results_file import read_results
    from fl_sim.config import load_config

    sim = {"simulation.device": args.device, "simulation.precision": args.precision,
           "simulation.num_gpus_per_client": args.gpus_per_client}
    size = {k: v for k, v in (("fleet.num_devices", args.devices), ("strategy.clients_per_round", args.per_round))
            if v is not None}
    for strategy in args.strategies.split(","):
        cfg = load_config(REPO / "experiments" / "quickstart.toml", {"strategy.name": strategy, "rounds": args.rounds,
                                                                      "zoo": args.zoo, "output_dir": out, **sim,
                                                                      **size})
        res = read_results(run_experiment(cfg))
        done, wall = sum(r["participants"] for r in res), sum(r["wall_s"]["round"] for r in res)
        print(f"{strategy:<7} quickstart: {done} device-rounds in {wall:.1f} s of rounds = {60 * done / wall:.0f} "
              f"device-rounds per minute")
