"""Scale: many registered devices, a sample per round; framework overhead against a plain PyTorch loop.

Question: what does a round cost as the fleet grows (peak memory of the driver and its Ray workers,
device-rounds per minute), and how much does the framework (Flower, Ray, messages) add to the devices' own work?

    python -m benchmarks scale [--devices 1000] [--per-round 50] [--rounds 3] [--zoo default] [--no-warm-up]
                               [--strategy fedavg|fedprox|tent|source-only|cdcca] [--teacher-int8] [--no-plain]
                               [--json FILE] [--set KEY=VALUE ...]
    e.g. python -m benchmarks scale --strategy cdcca --devices 10000 --per-round 100

Prints wall time per round, peak RSS (this process plus its Ray workers, sampled every 0.5 s; also each
apart, their anonymous memory: the RSS less memory-mapped dataset pages, and their proportional memory: shared
pages counted once, what the machine holds; beside the capacity check's estimate) and the
overhead ratio: Flower round wall time (send -> all replies) divided by the time the same devices' work
(``clients.local_training.run_local_round`` with the same settings) takes in one plain loop in this process; and
throughput, device-rounds per minute. With ``simulation.warm_up`` (the default) the Ray workers load tier
models and domain splits while nodes are mapped, and the plain loop loads the same (``clients.warm_up``)
before its timed rounds; both warm-up times are printed. ``--no-warm-up``: both start cold.
With ``--strategy cdcca`` the plain loop runs ``clients.cdcca_device.run_cdcca_round`` (the devices'
work), the round's cloud phases are printed from ``cloud_phases_s`` (decode, teacher labelling, extra
questions, AKD and DWC per tier), and a plain-loop cloud reference repeats the round's teacher labelling
and AKD steps on as many source samples, calling ``fl_sim.mechanisms.akd`` directly.
``--no-plain`` skips the plain-loop references (the Flower run's own figures only); ``--json FILE`` also
writes the run's figures there (``python -m benchmarks cost_curves`` collects them).
Each domain's train split holds at least two samples per device (``fleet.train_size``), so the
partitioner can give every device data.
Targets: peak RSS <= 8 GiB, overhead ratio <= 1.5.
"""

import tempfile
import time
from pathlib import Path

from benchmarks.lib import PeakMemory, device_env, gib, plain_device_round, plain_strategy, quiet

SMOKE = ["--zoo", "tiny", "--strategy", "cdcca", "--devices", "4", "--per-round", "2", "--rounds", "1"]


def add_arguments(ap) -> None:
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox", "tent", "source-only", "cdcca"],
                    help="the plain loop runs the strategy's device round (run_local_round, run_cdcca_round)")
    ap.add_argument("--no-warm-up", action="store_true", help="simulation.warm_up = false (workers load in round 1)")
    ap.add_argument("--teacher-int8", action="store_true", help="cdcca: strategy.akd.teacher_int8 = true")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain-loop references")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override, as fl-sim run's --set (repeatable)")


def run(args) -> None:
    quiet()
    import torch

    from fl_sim.app.run import run_experiment
    from fl_sim.callbacks.results_file import read_results
    from fl_sim.config import parse_config
    from fl_sim.config.overrides import parse_set_overrides

    out = tempfile.mkdtemp(prefix="fl-sim-scale-")
    cfg = parse_config({"name": "scale", "zoo": args.zoo, "rounds": args.rounds, "output_dir": out,
                        "fleet": {"num_devices": args.devices, "active_fraction": {"low": 1.0, "high": 1.0},
                                  "train_size": max(2000, 2 * args.devices)},
                        "strategy": {"name": args.strategy, "clients_per_round": args.per_round,
                                     "over_commit": 1.0, "akd": {"teacher_int8": args.teacher_int8}},
                        "eval": {"n_test": 20, "every": 1000},
                        "simulation": {"warm_up": not args.no_warm_up}}, parse_set_overrides(args.set))
    from fl_sim.app.capacity import needs
    from fl_sim.app.preflight import cloud_workers
    from fl_sim.models.presets import get_zoo

    estimate = sum(needs(cfg, args.devices, cloud_workers(cfg, len(get_zoo(args.zoo).tiers)))["memory"].values())
    t0 = time.time()
    with PeakMemory() as mem:
        run_dir = run_experiment(cfg)
    total = time.time() - t0
    res = read_results(run_dir)
    done = sum(r["participants"] for r in res)
    # a round's own record holds its devices, cloud and evaluation; its results and checkpoint writing are
    # in the next round's record (the last round's are not counted)
    rounds_wall = sum(r["wall_s"]["round"] + sum(r["wall_s"].get("previous_round_callbacks", {}).values())
                      for r in res)
    first_wall = res[0].get("wall_s") or {}
    figures = {"strategy": args.strategy, "overrides": args.set,
               "devices": args.devices, "per_round": args.per_round, "rounds": args.rounds,
               "teacher_int8": args.teacher_int8, "peak_rss_gib": gib(mem.peak),
               "driver_peak_rss_gib": gib(mem.driver_peak), "workers_peak_rss_gib": gib(mem.children_peak),
               "peak_anon_gib": gib(mem.anon_peak), "peak_pss_gib": gib(mem.pss_peak),
               "capacity_estimate_gib": gib(estimate),
               "at_pss_peak": [{"process": n, "rss_gib": gib(r), "anon_gib": gib(a), "pss_gib": gib(s)}
                               for n, r, a, s in sorted(mem.at_pss_peak, key=lambda p: -p[3])],
               "device_rounds_per_min": 60 * done / rounds_wall, "device_rounds_per_min_total": 60 * done / total,
               "map_nodes_s": first_wall.get("map_nodes"), "prepare_data_s": first_wall.get("prepare_data"),
               "round_s": [r["wall_s"]["round"] for r in res], "cloud_s": [r.get("cloud_wall_s") for r in res],
               "total_s": total}
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    print("at the proportional peak (GiB resident / anonymous / proportional): " + "; ".join(
        f"{p['process']} {p['rss_gib']:.2f}/{p['anon_gib']:.2f}/{p['pss_gib']:.2f}" for p in figures["at_pss_peak"]
        if p["pss_gib"] >= 0.05))
    if args.no_plain:
        print(f"devices {args.devices}, {args.per_round} per round, {args.rounds} rounds, {args.strategy}: "
              f"{figures['device_rounds_per_min']:.0f} device-rounds/min over the rounds, peak RSS "
              f"{figures['peak_rss_gib']:.2f} GiB (driver {figures['driver_peak_rss_gib']:.2f}, workers "
              f"{figures['workers_peak_rss_gib']:.2f}; anonymous {figures['peak_anon_gib']:.2f}; proportional "
              f"{figures['peak_pss_gib']:.2f}; capacity estimate {figures['capacity_estimate_gib']:.2f}), "
              f"provisioning {figures['map_nodes_s'] or 0:.1f} s, "
              f"total {total:.1f} s")
        return

    # the same devices' work in a plain loop (same config, so the same fleet; initial adapters), 2 threads, one
    # process; the run prepared again outside Flower, its files in a folder of its own
    s = plain_strategy(cfg, Path(out) / "plain")
    env = device_env(s)
    torch.set_num_threads(2)
    plain_warm = None
    if cfg.simulation.warm_up:  # the plain loop loads what the Flower workers loaded before round 1
        from clients.warm_up import warm_up
        from fl_sim.device import model_cache

        for f in (model_cache.adapted_model, model_cache.base_model, model_cache.prompter, model_cache.prompter_for,
                  model_cache.split, model_cache.device_pools, model_cache.reference_token):
            f.cache_clear()  # this process loaded them already: start the plain loop as cold as a fresh worker
        t = time.time()
        warm_up(s.ctx.env_path, [(s.device.name, d, r) for d, r in s.first_visits()])
        plain_warm = time.time() - t
    plain = []
    for rec in res:
        t = time.time()
        for dev in rec["sampled_ids"]:
            plain_device_round(s, env, dev, rec["round"])
        plain.append(time.time() - t)
    cloud_plain = [plain_cloud(s, cfg, rec) for rec in res] if args.strategy == "cdcca" else None
    print(f"devices {args.devices}, {args.per_round} per round, {args.rounds} rounds, zoo {args.zoo}")
    for rec, p in zip(res, plain):
        ratio = rec["wall_s"]["train"] / p
        print(f"round {rec['round']}: flower train phase {rec['wall_s']['train']:.1f} s, plain loop {p:.1f} s, "
              f"overhead ratio {ratio:.2f}; whole round {rec['wall_s']['round']:.1f} s, "
              f"{rec['participants']} device-rounds = "
              f"{60 * rec['participants'] / rec['wall_s']['round']:.0f} per minute")
    first = res[0]
    warm = (first.get("wall_s") or {}).get("map_nodes")
    data_s = (first.get("wall_s") or {}).get("prepare_data")
    if data_s is not None:
        print(f"before round 1: domain splits and device partitions for {args.devices} devices {data_s:.1f} s "
              "(cached on disk for the next run)")
    if warm is not None:
        warmed = plain_warm is not None
        print(f"before round 1: provisioning the Flower nodes{' + worker warm-up' if warmed else ''} {warm:.1f} s"
              + (f"; plain-loop warm-up {plain_warm:.1f} s; round 1 + warm-up ratio "
                 f"{(first['wall_s']['train'] + warm) / (plain[0] + plain_warm):.2f}" if warmed else ""))
    if cloud_plain is not None:
        for rec, cp in zip(res, cloud_plain):
            ph = rec.get("cloud_phases_s") or {}
            print(f"round {rec['round']} cloud: {rec['cloud_wall_s']:.1f} s = "
                  + ", ".join(f"{k} {v:.1f}" for k, v in ph.items())
                  + f"; evaluation {rec['wall_s']['evaluate']:.1f} s; plain-loop cloud {cp:.1f} s, ratio "
                  f"{rec['cloud_wall_s'] / cp:.2f}   target <= 1.3")
    for prev, rec in zip(res, res[1:]):
        after = rec["wall_s"].get("previous_round_callbacks") or {}
        print(f"after round {prev['round']}: " + ", ".join(f"{k} {v:.2f} s" for k, v in after.items())
              + " (results.jsonl + TensorBoard, checkpoint)")
    ratios = [r["wall_s"]["train"] / p for r, p in zip(res, plain)]
    print(f"overhead ratio per round: worst {max(ratios):.2f} (round {1 + ratios.index(max(ratios))}), all rounds "
          f"{sum(r['wall_s']['train'] for r in res) / sum(plain):.2f}   target <= 1.5"
          + ("" if plain_warm is not None else "   (cold start: round 1 includes worker start-up)"))
    print(f"peak RSS (driver + Ray workers): {gib(mem.peak):.2f} GiB (driver {gib(mem.driver_peak):.2f}, "
          f"workers {gib(mem.children_peak):.2f}; anonymous {gib(mem.anon_peak):.2f}; proportional "
          f"{gib(mem.pss_peak):.2f}; capacity estimate {gib(estimate):.2f})   target <= 8 GiB "
          "(<= 6 GiB for cdcca at 10,000 devices, 100 per round)")
    print(f"throughput: {done} device-rounds in {rounds_wall:.1f} s of rounds = "
          f"{60 * done / rounds_wall:.0f} per minute "
          f"({60 * done / total:.0f} per minute counting Ray start and node mapping)")
    print(f"total wall time incl. Ray start and node mapping: {total:.1f} s")


def plain_cloud(s, cfg, rec) -> float:
    """Seconds the round's cloud work takes as plain calls: the teacher labels ``uploaded_samples`` source
    samples (and captions them when extra questions are on) and each tier runs ``akd.steps`` AKD steps."""
    import numpy as np
    import torch

    from fl_sim.device import model_cache
    from fl_sim.mechanisms import akd
    from fl_sim.models.mllm import visual_tokens

    n = int(rec.get("uploaded_samples", 0))
    if n == 0:
        return float("nan")
    a = cfg.strategy.akd
    ds = model_cache.split("source", "train", cfg.fleet.train_size, cfg.seed, cfg.cache_dir).select(range(n))
    teacher_path = s.ctx.model_paths["teacher"]
    teacher, pr = model_cache.base_model(teacher_path), model_cache.prompter_for(teacher_path, cfg.cache_dir)
    labeller = model_cache.labelling_model(teacher_path, cfg.strategy.akd.teacher_int8)
    with torch.no_grad():
        vis = visual_tokens(teacher, pr.pixels(np.asarray(ds["image"])))
    t = time.time()
    targets = akd.teacher_targets(labeller, pr, vis, list(ds["question"]), a.max_new_tokens)
    if a.extra_questions:
        from fl_sim.world.domains import CAPTION_QUESTION

        akd.teacher_targets(labeller, pr, vis, [CAPTION_QUESTION] * n, a.max_new_tokens)
    rng = np.random.default_rng(0)
    for tier in s.tiers:
        model, init = model_cache.adapted_model(s.ctx.model_paths[tier], *cfg.strategy.adapters())
        align = torch.nn.Linear(model.config.text_config.hidden_size, teacher.config.text_config.hidden_size)
        akd.train_adapters(model, align, lambda step: akd.take(targets, rng.choice(n, size=min(n, a.batch_size))),
                           a, 0)
        from fl_sim.models.adapters import load_adapter_state

        load_adapter_state(model, init)
    return time.time() - t

