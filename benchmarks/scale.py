"""Scale: many registered devices, a sample per round; framework overhead against a plain PyTorch loop.

    python benchmarks/scale.py [--devices 1000] [--per-round 50] [--rounds 3] [--zoo default] [--no-warm-up]

Prints wall time per round, peak RSS (this process plus its Ray workers, sampled every 0.5 s) and the
overhead ratio: Flower round wall time (send -> all replies) divided by the time the same devices' work
(``clients.local_training.run_local_round`` with the same settings) takes in one plain loop in this process; and
throughput, device-rounds per minute. With ``simulation.warm_up`` (the default) the Ray workers load tier
models and domain splits while nodes are mapped, and the plain loop loads the same (``clients.warm_up``)
before its timed rounds; both warm-up times are printed. ``--no-warm-up``: both start cold.
Targets: peak RSS <= 8 GiB, overhead ratio <= 1.5.
"""

import argparse
import tempfile
import time

from peak_memory import PeakMemory

from fl_sim.cli import quiet_libraries


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox", "tent", "source-only"],
                    help="a local-training strategy (its plain loop is clients.local_training.run_local_round)")
    ap.add_argument("--no-warm-up", action="store_true", help="simulation.warm_up = false (workers load in round 1)")
    args = ap.parse_args()
    quiet_libraries()
    import torch

    from clients.behaviour import DeviceRound
    from clients.local_training import run_local_round
    from fl_sim.config import parse_config
    from fl_sim.device_env import load_device_env
    from fl_sim.metrics import read_results
    from fl_sim.run import run_experiment
    from strategies import get_strategy
    from strategies.base import RunContext

    out = tempfile.mkdtemp(prefix="fl-sim-scale-")
    cfg = parse_config({"name": "scale", "zoo": args.zoo, "rounds": args.rounds, "output_dir": out,
                        "fleet": {"num_devices": args.devices, "active_fraction": {"low": 1.0, "high": 1.0}},
                        "strategy": {"name": args.strategy, "clients_per_round": args.per_round,
                                     "over_commit": 1.0},
                        "eval": {"n_test": 20, "every": 1000},
                        "simulation": {"warm_up": not args.no_warm_up}})
    t0 = time.time()
    with PeakMemory() as mem:
        run_dir = run_experiment(cfg)
    total = time.time() - t0
    res = read_results(run_dir)

    # the same devices' work in a plain loop (same configs, initial adapters), 2 threads, one process
    from fl_sim.fleet import load_trace
    from fl_sim.models.zoo import pretrain_zoo

    zoo = pretrain_zoo(args.zoo, seed=cfg.zoo_seed, cache_dir=cfg.cache_dir)
    fleet = load_trace(run_dir / "fleet.json", list(zoo.tiers))
    env_path = str(run_dir.resolve() / "device_env.json")
    s = get_strategy(args.strategy)(RunContext(cfg, fleet, {k: str(v) for k, v in zoo.paths.items()}, run_dir,
                                               env_path=env_path))
    s.state = {t: s.initial_state(t) for t in s.tiers}
    env = load_device_env(env_path)
    torch.set_num_threads(2)
    plain_warm = None
    if cfg.simulation.warm_up:  # the plain loop loads what the Flower workers loaded before round 1
        from clients.warm_up import warm_up
        from fl_sim import runtime

        for f in (runtime.adapted_model, runtime.base_model, runtime.prompter, runtime.split, runtime.device_pools,
                  runtime.reference_token):
            f.cache_clear()  # this process loaded them already: start the plain loop as cold as a fresh worker
        t = time.time()
        warm_up(env_path, [(s.device.name, d, r) for d, r in s.first_visits()])
        plain_warm = time.time() - t
    plain = []
    for rec in res:
        t = time.time()
        for dev in rec["sampled_ids"]:
            p = fleet[dev]
            run_local_round(DeviceRound(env, dev, rec["round"]), s.device_settings(p, rec["round"]),
                            s.downlink(p.tier))
        plain.append(time.time() - t)
    print(f"devices {args.devices}, {args.per_round} per round, {args.rounds} rounds, zoo {args.zoo}")
    for rec, p in zip(res, plain):
        ratio = rec["wall_s"]["train"] / p
        print(f"round {rec['round']}: flower train phase {rec['wall_s']['train']:.1f} s, plain loop {p:.1f} s, "
              f"overhead ratio {ratio:.2f}; whole round {rec['wall_s']['round']:.1f} s, "
              f"{rec['participants']} device-rounds = "
              f"{60 * rec['participants'] / rec['wall_s']['round']:.0f} per minute")
    first = res[0]
    warm = (first.get("wall_s") or {}).get("map_nodes")
    if warm is not None:
        warmed = plain_warm is not None
        print(f"before round 1: Flower node mapping{' + worker warm-up' if warmed else ''} {warm:.1f} s"
              + (f"; plain-loop warm-up {plain_warm:.1f} s; round 1 + warm-up ratio "
                 f"{(first['wall_s']['train'] + warm) / (plain[0] + plain_warm):.2f}" if warmed else ""))
    ratios = [r["wall_s"]["train"] / p for r, p in zip(res, plain)]
    print(f"overhead ratio per round: worst {max(ratios):.2f} (round {1 + ratios.index(max(ratios))}), all rounds "
          f"{sum(r['wall_s']['train'] for r in res) / sum(plain):.2f}   target <= 1.5"
          + ("" if plain_warm is not None else "   (cold start: round 1 includes worker start-up)"))
    print(f"peak RSS (driver + Ray workers): {mem.peak / 2**30:.2f} GiB   target <= 8 GiB")
    done = sum(r["participants"] for r in res)
    rounds_wall = sum(r["wall_s"]["round"] for r in res)
    print(f"throughput: {done} device-rounds in {rounds_wall:.1f} s of rounds = "
          f"{60 * done / rounds_wall:.0f} per minute "
          f"({60 * done / total:.0f} per minute counting Ray start and node mapping)")
    print(f"total wall time incl. Ray start and node mapping: {total:.1f} s")


if __name__ == "__main__":
    main()
