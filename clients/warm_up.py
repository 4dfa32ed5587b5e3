"""Worker warm-up: load, once per worker process, what the devices of a run will need.

Each tier's model with adapters (and one answer through it, so lazy initialisation happens now), each
domain's split and device partition, and what a behaviour loads beyond those: the per-process caches
of ``fl_sim.device.model_cache`` that a worker would otherwise fill in its first round.
"""

from __future__ import annotations

import torch

from clients.behaviour import DeviceRound, load_behaviour
from fl_sim.device.environment import load_device_env
from fl_sim.models import placement
from fl_sim.models.mllm import answer

_DONE: set = set()  # what this worker process has warmed up


def warm_up(env_path: str, visits: list[tuple[str, int, int]]) -> int:
    """Warm up for ``visits``: ``(behaviour, device id, round)`` of the first device of each tier to see
    each domain. Returns how many did new work."""
    env = load_device_env(env_path)
    torch.set_num_threads(env.threads)
    placement.use(env.device, env.precision)
    done = 0
    for behaviour, device_id, server_round in visits:
        dev = DeviceRound(env, int(device_id), int(server_round))
        key = (env_path, behaviour, dev.model_path, env.adapters(), dev.domain)
        if key in _DONE:
            continue
        _DONE.add(key)
        model, _ = dev.model()
        data = dev.samples(1)
        if (dev.model_path, env.adapters(), "answer") not in _DONE:
            _DONE.add((dev.model_path, env.adapters(), "answer"))
            answer(model, dev.prompter(), data["image"], data["question"], max_new_tokens=2)
        load_behaviour(behaviour).warm_up(dev)
        done += 1
    return done
