"""fl-sim as a Flower App: ``flwr run .`` runs the experiment its run config names, with the same server
loop (``prepare_run`` + the strategy's ``run``) and the same ClientApp (``clients.device:app``) as
``fl-sim run``, on a Flower simulation federation (a local SuperLink that ``flwr`` starts itself).

    flwr federation simulation-config @none/default local --num-supernodes 24   # the fleet's size, once
    flwr run . --stream --run-config 'experiment="experiments/quickstart.toml"'

Run config (``[tool.flwr.app.config]`` in pyproject.toml, or ``--run-config``):
``experiment``  an experiment file, relative to this project's folder (the app's own copy of it)
``set``         overrides as ``fl-sim run --set`` takes them, separated by ``;``: ``"rounds=2;seed=1"``
``output-dir``  where runs are written (default ``~/fl-sim/runs``: the app runs from Flower's own folder)
The federation must have exactly as many SuperNodes as the experiment has devices.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context) -> None:
    from . import FlSimError
    from .cli import parse_set_overrides, quiet_libraries
    from .config import load_config
    from .run import prepare_run, quiet_flower

    quiet_libraries()
    quiet_flower()
    rc = dict(context.run_config)
    overrides = parse_set_overrides([s for s in str(rc.get("set", "")).split(";") if s.strip()])
    overrides.setdefault("output_dir", str(Path(str(rc.get("output-dir", "~/fl-sim/runs"))).expanduser()))
    cfg = load_config(Path(__file__).resolve().parents[1] / str(rc["experiment"]), overrides)
    strategy = prepare_run(cfg)
    want = len(strategy.ctx.fleet)
    deadline = time.time() + 30
    while len(nodes := list(grid.get_node_ids())) < want and time.time() < deadline:
        time.sleep(0.2)
    if len(nodes) != want:
        raise FlSimError(f"the federation has {len(nodes)} SuperNodes and {rc['experiment']} {want} devices: run "
                         f"`flwr federation simulation-config @none/default local --num-supernodes {want}`")
    strategy.run(grid)
    print(f"fl-sim: results in {strategy.ctx.run_dir}/results.jsonl", flush=True)
