"""Talking to the nodes through Flower's Grid: send and wait (stopping when the backend dies), and the
one-off mapping of Flower node ids to the devices they emulate."""

from __future__ import annotations

import threading
import time


def send_and_receive(grid, messages: list, timeout: float, abort: threading.Event) -> list:
    """``grid.send_and_receive`` that also stops waiting when ``abort`` is set (backend crashed)."""
    if not messages:
        return []
    pending = set(grid.push_messages(messages))
    out, end = [], time.time() + timeout
    while pending and time.time() < end and not abort.is_set():
        got = list(grid.pull_messages(pending))
        out += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if pending:
            time.sleep(0.02)
    return out


def map_nodes(grid, n_devices: int, provision: dict, timeout: float, abort: threading.Event) -> dict[int, int]:
    """``device id -> node id``: wait until ``n_devices`` nodes registered, then send each the
    ``provision`` ConfigRecord values (``clients/device.py``'s query) and read which device it emulates."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    deadline = time.time() + timeout
    while len(ids := list(grid.get_node_ids())) < n_devices:
        if time.time() > deadline or abort.is_set():
            raise RuntimeError(f"only {len(ids)} of {n_devices} nodes registered")
        time.sleep(0.05)
    msgs = [Message(RecordDict({"provision": ConfigRecord(dict(provision))}), dst_node_id=n,
                    message_type=MessageType.QUERY) for n in ids]
    node_of, errors = {}, []
    for rep in send_and_receive(grid, msgs, timeout, abort):
        if rep.has_error():
            errors.append(rep.error.reason.strip().splitlines()[-1] if rep.error.reason else str(rep.error.code))
        else:
            node_of[int(rep.content["device"]["device_id"])] = rep.metadata.src_node_id
    if len(node_of) != n_devices:
        raise RuntimeError(f"only {len(node_of)} of {n_devices} devices answered the query"
                           + (f" (first error: {errors[0]})" if errors else ""))
    return node_of
