"""fl-sim as a Flower App: ``flwr run .`` runs the experiment its run config names, with the same server
loop (``prepare_run`` + the strategy's ``run``) and the same ClientApp (``clients.device:app``) as
``fl-sim run``, on a Flower simulation federation (a local SuperLink that ``flwr`` starts itself).

    flwr federation simulation-config @none/default local --num-supernodes 11   # any number, once
    flwr run . --stream --run-config 'experiment="experiments/quickstart.toml"'

Run config (``[tool.flwr.app.config]`` in pyproject.toml, or ``--run-config``):
``experiment``  an experiment file, relative to this project's folder (the app's own copy of it)
``set``         overrides as ``fl-sim run --set`` takes them, separated by ``;``: ``"rounds=2;seed=1"``
``output-dir``  where runs are written (default ``~/fl-sim/runs``: the app runs from Flower's own folder)
The federation may have any number of SuperNodes: each emulates whichever device a message names (as
many as one round messages, ``clients_per_round x over_commit``, lets a round's devices run side by side).
"""

from __future__ import annotations

from pathlib import Path

from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context) -> None:
    from fl_sim.app.run import prepare_run, quiet_flower
    from fl_sim.config import load_config
    from fl_sim.config.overrides import parse_set_overrides
    from fl_sim.quiet import quiet_libraries

    quiet_libraries()
    quiet_flower()
    rc = dict(context.run_config)
    overrides = parse_set_overrides([s for s in str(rc.get("set", "")).split(";") if s.strip()])
    overrides.setdefault("output_dir", str(Path(str(rc.get("output-dir", "~/fl-sim/runs"))).expanduser()))
    cfg = load_config(Path(__file__).resolve().parents[2] / str(rc["experiment"]), overrides)
    strategy = prepare_run(cfg)
    from fl_sim.server import loop

    loop.run(strategy, grid, n_nodes=0)  # the federation's SuperNodes, however many registered
    print(f"fl-sim: results in {strategy.ctx.run_dir}/results.jsonl", flush=True)
