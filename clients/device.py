"""The Flower ClientApp: a virtual node emulates the device its message names, with the behaviour its task names.

Messages it handles:

``query``  provisioning, once per run: content ``provision`` (ConfigRecord) holds ``env``, the path of the
           run's device environment (``fl_sim.device.environment``), which the node keeps in its
           ``Context.state``; with ``warm`` (a JSON list of ``[behaviour, device id, round]``) the worker process
           first loads what those devices need (``clients.warm_up``). Replies an empty ``ready`` record.
``train``  content ``task`` (``fl_sim.protocol.device_task``: the behaviour, the round, its settings),
           ``emulate`` (the device this node emulates this round) plus what the strategy sends beside them;
           the behaviour (``clients/<name>.py``) makes the reply.

A node is not tied to one device: it emulates whichever device a message names, so a few nodes serve a
fleet of any size.

Per-device state lives on the server side (adapters are shared per tier and version), so
``Context.state`` holds only the environment's path; base models are cached per worker by tier.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()  # heavy imports (torch, transformers) happen on the first message needing them, not at load
STATE = "fl-sim"
_QUIET: list = []


def _quiet() -> None:
    """No progress bars or library warnings from the workers (``flwr run`` streams their output)."""
    if not _QUIET:
        from fl_sim.quiet import quiet_libraries

        quiet_libraries()
        _QUIET.append(True)


@app.query()
def query(msg: Message, context: Context) -> Message:
    _quiet()
    if "provision" in msg.content:
        rec = msg.content["provision"]
        context.state[STATE] = ConfigRecord({"env": str(rec["env"])})
        if "warm" in rec:
            _warm(str(rec["env"]), str(rec["warm"]))
    return Message(RecordDict({"ready": ConfigRecord({})}), reply_to=msg)


def _warm(env_path: str, warm: str) -> None:
    import json

    from clients.warm_up import warm_up

    try:  # best effort: a device that cannot load fails in its round, where it is counted
        warm_up(env_path, [tuple(x) for x in json.loads(warm)])
    except Exception as exc:  # noqa: BLE001
        logging.getLogger(__name__).warning("worker warm-up failed: %s", exc)


@app.train()
def train(msg: Message, context: Context) -> Message:
    import torch

    from clients.behaviour import DeviceRound, load_behaviour
    from fl_sim.device.environment import load_device_env
    from fl_sim.models import placement
    from fl_sim.protocol.device_task import EMULATE, read_task

    _quiet()
    env = load_device_env(str(context.state[STATE]["env"]))
    torch.set_num_threads(env.threads)
    placement.use(env.device, env.precision)
    task, _ = read_task(msg.content)
    behaviour = load_behaviour(task.behaviour)
    settings = behaviour.Settings.model_validate(task.settings)
    dev = DeviceRound(env, int(msg.content[EMULATE]["device_id"]), task.round)
    try:
        return Message(RecordDict(behaviour.run(dev, settings, msg.content)), reply_to=msg)
    finally:
        placement.release()  # the worker's GPU share keeps its models, not this device's activations
