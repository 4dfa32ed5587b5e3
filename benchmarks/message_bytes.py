"""What one round's message to a device costs, per strategy: the task alone and with its payload.

    python benchmarks/message_bytes.py [--config experiments/shift.toml] [--zoo default]

For each registered strategy: the serialized bytes (Flower's wire format, ``fl_sim.protocol.records.payload_bytes``)
of the ``"task"`` record a device gets in round 1 (behaviour, round and settings as JSON), and of the
whole round-1 message to a device of the first tier (task + adapter weights; CD-CCA devices start at
version 0, so their first message is the task alone). Nothing depends on the run directory's path.
"""

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="experiments/shift.toml")
    ap.add_argument("--zoo", default=None, help="override the experiment's zoo (e.g. tiny)")
    args = ap.parse_args()
    from fl_sim.app.cli import quiet_libraries

    quiet_libraries()
    from flwr.app import RecordDict

    from fl_sim.config import load_config
    from fl_sim.fleet.profiles import make_fleet
    from fl_sim.models.zoo import pretrain_zoo
    from fl_sim.protocol.records import payload_bytes
    from fl_sim.protocol.task import task_record
    from fl_sim.server.strategy import RunContext
    from strategies import REGISTRY, get_strategy

    over = {"zoo": args.zoo} if args.zoo else {}
    print(f"round-1 message to one device, {args.config}" + (f", zoo {args.zoo}" if args.zoo else ""))
    print(f"{'strategy':<15} {'task record B':>14} {'whole message B':>16}  task JSON")
    for name in REGISTRY:
        cfg = load_config(args.config, over | {"strategy.name": name})
        cls = get_strategy(name)
        cfg = cls.effective_config(cfg)
        zoo = pretrain_zoo(cfg.zoo, seed=cfg.zoo_seed, cache_dir=cfg.cache_dir)
        fleet = make_fleet(cfg.fleet, list(zoo.tiers), cfg.seed)
        s = cls(RunContext(cfg, fleet, {k: str(v) for k, v in zoo.paths.items()}, Path(tempfile.mkdtemp())))
        s.state = s.init_state()
        task, content = s.message_content(fleet[0], 1)
        only = payload_bytes(RecordDict({"task": task_record(task)}))
        print(f"{name:<15} {only:>14,d} {payload_bytes(content):>16,d}  {len(task.model_dump_json())} chars")


if __name__ == "__main__":
    main()
