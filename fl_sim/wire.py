"""What crosses the network: Flower records built from tensors, and their exact serialized size.

Sizes are those of Flower's own wire format: the message content's object tree (RecordDict ->
ArrayRecord/ConfigRecord/MetricRecord -> Array -> chunks), each object deflated as Flower ships it.
"""

from __future__ import annotations

import numpy as np
import torch


def payload_bytes(content) -> int:
    """Serialized bytes of a ``RecordDict`` (or any Flower inflatable record) as Flower would send it."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())


def to_array_record(tensors: dict[str, torch.Tensor]):
    """An ``ArrayRecord`` of numpy arrays (keys kept, order kept)."""
    from flwr.app import ArrayRecord

    return ArrayRecord({k: _np(v) for k, v in tensors.items()})


def _np(v):
    from flwr.app import Array

    return Array(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))


def from_array_record(record) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}
