"""What a registered device costs the server when it is not sampled: bytes per device at 1k / 10k / 100k.

    python benchmarks/registered_devices.py [--devices 1000 10000 100000]

Per fleet size, on the server: the device profiles (``fl_sim.fleet.profiles.make_fleet``, Python heap measured with
``tracemalloc``), the same profiles as each Ray worker keeps them (``fl_sim.fleet.profile_table``), the fleet
trace every run writes (``fleet.json``, bytes on disk), and one domain's device
partition as ``runtime.device_pools`` keeps it (row and offset arrays plus one array view per device),
computed by the flwr-datasets Dirichlet partitioner over a train split of two samples per device (only
the partition column and row numbers: the images never enter the partitioner), with its time. Flower
holds nothing per registered device: a run starts as many nodes as one round messages
(``simulation.num_nodes``).
"""

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, nargs="+", default=[1000, 10000, 100000])
    args = ap.parse_args()
    from datasets import Dataset, disable_progress_bars

    from fl_sim.config import FleetConfig
    from fl_sim.fleet.profile_table import ProfileTable
    from fl_sim.fleet.profiles import make_fleet, save_trace
    from fl_sim.world.data import partition_rows
    from fl_sim.world.domains import VQA_FAMILIES

    disable_progress_bars()
    print("devices | profiles B/device | worker profiles B/device | fleet.json B/device | partition B/device | "
          "partition time | total B/device")
    for n in args.devices:
        tracemalloc.start()
        fleet = make_fleet(FleetConfig(num_devices=n, train_size=2 * n), ["phone-high", "phone-mid", "phone-low"], 0)
        profiles = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        worker = ProfileTable(fleet).nbytes()  # what each Ray worker keeps (fl_sim.device.environment.profile)
        with tempfile.TemporaryDirectory() as tmp:
            save_trace(fleet, Path(tmp) / "fleet.json")
            trace = (Path(tmp) / "fleet.json").stat().st_size
        rng = np.random.default_rng(0)
        families = list(VQA_FAMILIES) + ["caption"]
        ds = Dataset.from_dict({"family": rng.choice(families, 2 * n).tolist(), "row": np.arange(2 * n)})
        t = time.time()
        parts = [p.astype(np.int64) for p in partition_rows(ds, n, "row", by="family", alpha=0.5, seed=0)]
        part_s = time.time() - t
        rows = np.concatenate(parts)
        offsets = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
        views = tuple(rows[offsets[i]:offsets[i + 1]] for i in range(n))
        pools = rows.nbytes + offsets.nbytes + sum(sys.getsizeof(v) for v in views) + sys.getsizeof(views)
        total = profiles + pools
        print(f"{n} | {profiles / n:.0f} | {worker / n:.0f} | {trace / n:.0f} | {pools / n:.0f} | {part_s:.1f} s | "
              f"{total / n:.0f}", flush=True)


if __name__ == "__main__":
    main()
