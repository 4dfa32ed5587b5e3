"""Talking to the nodes through Flower's Grid: send and wait (stopping when the backend dies), and the
one-off provisioning of the nodes.

A Flower node is not a device: each message names the device its node emulates this round (the
``emulate`` record, ``clients/device.py``), so a pool of nodes as large as one round's messages serves a
fleet of any size, and registering the fleet costs Flower nothing."""

from __future__ import annotations

import math
import threading
import time


def send_and_receive(grid, messages: list, timeout: float, abort: threading.Event) -> list[tuple[int, object]]:
    """``grid.send_and_receive`` that also stops waiting when ``abort`` is set (backend crashed); returns
    ``(index of the message in messages, its reply)`` for every reply that came."""
    if not messages:
        return []
    index = {mid: i for i, mid in enumerate(grid.push_messages(messages))}
    pending = set(index)
    out, end = [], time.time() + timeout
    while pending and time.time() < end and not abort.is_set():
        got = list(grid.pull_messages(pending))
        out += [(index[m.metadata.reply_to_message_id], m) for m in got]
        pending -= {m.metadata.reply_to_message_id for m in got}
        if pending:
            time.sleep(0.02)
    return out


def num_nodes(cfg, n_devices: int) -> int:
    """Flower nodes a run starts: ``simulation.num_nodes``, or as many as one round sends messages to
    (``clients_per_round x over_commit``), never more than the fleet's devices."""
    s = cfg.strategy
    return min(n_devices, cfg.simulation.num_nodes or math.ceil(s.clients_per_round * s.over_commit))


def provision_nodes(grid, n_nodes: int | None, provision: dict, timeout: float, abort: threading.Event) -> list[int]:
    """The node ids, sorted, once ``n_nodes`` nodes registered (``None``: however many registered, at least
    one), each sent the ``provision`` ConfigRecord values (``clients/device.py``'s query) and answering."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    deadline = time.time() + timeout
    while len(ids := sorted(grid.get_node_ids())) < (n_nodes or 1):
        if time.time() > deadline or abort.is_set():
            raise RuntimeError(f"only {len(ids)} of {n_nodes or 1} nodes registered")
        time.sleep(0.05)
    if n_nodes is None:  # however many: until no more register for a second
        while time.time() < deadline and not abort.is_set():
            time.sleep(1.0)
            if len(more := sorted(grid.get_node_ids())) == len(ids):
                break
            ids = more
    msgs = [Message(RecordDict({"provision": ConfigRecord(dict(provision))}), dst_node_id=n,
                    message_type=MessageType.QUERY) for n in ids]
    ready, errors = set(), []
    for i, rep in send_and_receive(grid, msgs, timeout, abort):
        if rep.has_error():
            errors.append(rep.error.reason.strip().splitlines()[-1] if rep.error.reason else str(rep.error.code))
        else:
            ready.add(ids[i])
    if len(ready) != len(ids):
        raise RuntimeError(f"only {len(ready)} of {len(ids)} nodes answered the provisioning query"
                           + (f" (first error: {errors[0]})" if errors else ""))
    return ids
