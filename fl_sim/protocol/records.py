"""What crosses the network: Flower records built from tensors, and their exact serialized size.

Sizes are those of Flower's own wire format: the message content's object tree (RecordDict ->
ArrayRecord/ConfigRecord/MetricRecord -> Array -> chunks), each object deflated as Flower ships it.
"""

from __future__ import annotations

import math

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


# ---------------------------------------------------------------- several arrays as one blob
# Flower frames every Array separately (an Array object plus a chunk, each with its own header: about
# 450 bytes per array), while a ``bytes`` value costs about 20 in a ConfigRecord (about 175 with a record
# of its own in a message). Small payloads made of
# several arrays (a UTS upload: questions, lengths, tokens, scales, mask) therefore go as one ``bytes``
# value: a 4-byte little-endian header length, a JSON header ``[[name, dtype, shape], ...]`` and the
# arrays' bytes in that order.
PACK_DTYPES = ("|u1", "|i1", "<u2", "<i2", "<f2", "<f4", "<i4", "<i8")
MAX_PACKED_ARRAYS = 64
MAX_HEADER_BYTES = 8192


def pack_arrays(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """``arrays`` as one 1-D uint8 array (see ``unpack_arrays``)."""
    import json

    if len(arrays) > MAX_PACKED_ARRAYS:
        raise ValueError(f"at most {MAX_PACKED_ARRAYS} arrays can be packed, got {len(arrays)}")
    parts, header = [], []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        if a.dtype.str not in PACK_DTYPES:
            raise ValueError(f"array {name!r} has dtype {a.dtype}; packable: {', '.join(PACK_DTYPES)}")
        header.append([name, a.dtype.str, list(a.shape)])
        parts.append(a.view(np.uint8).ravel())
    head = json.dumps(header, separators=(",", ":")).encode()
    return np.concatenate([np.frombuffer(np.uint32(len(head)).tobytes(), np.uint8),
                           np.frombuffer(head, np.uint8), *parts])


def packed_record(arrays: dict):
    """A ``ConfigRecord`` holding ``arrays`` (numpy or torch) packed into one ``bytes`` value, ``"packed"``."""
    from flwr.app import ConfigRecord

    return ConfigRecord({"packed": pack_arrays(
        {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in arrays.items()}).tobytes()})


def config_value_bytes(key: str, value) -> int:
    """Serialized bytes that entry ``key = value`` adds to a ConfigRecord (a DWC chain rides in the config)."""
    from flwr.app import ConfigRecord

    return payload_bytes(ConfigRecord({key: value})) - payload_bytes(ConfigRecord({}))


def record_values(record) -> dict:
    """A received record's values: Arrays as numpy arrays, ``bytes`` as 1-D uint8 arrays, others as they are."""
    return {k: a.numpy() if hasattr(a, "numpy") else np.frombuffer(a, np.uint8) if isinstance(a, bytes) else a
            for k, a in record.items()}


def unpack_arrays(blob: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays packed by ``pack_arrays``; ``PayloadError`` naming what is wrong with a malformed blob."""
    import json

    from fl_sim import PayloadError

    if not isinstance(blob, np.ndarray) or blob.dtype != np.uint8 or blob.ndim != 1:
        what = f"{blob.dtype} {blob.shape}" if isinstance(blob, np.ndarray) else type(blob).__name__
        raise PayloadError(f"packed payload must be a 1-D uint8 array, got {what}")
    if blob.size < 4:
        raise PayloadError("packed payload is truncated (no header length)")
    n = int(blob[:4].view("<u4")[0])
    if n > blob.size - 4:
        raise PayloadError(f"packed payload is truncated (header of {n} bytes, {blob.size - 4} left)")
    if n > MAX_HEADER_BYTES:
        raise PayloadError(f"packed payload header of {n} bytes (at most {MAX_HEADER_BYTES})")
    try:
        header = json.loads(blob[4:4 + n].tobytes())
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"packed payload has a malformed header: {type(exc).__name__}") from None
    if not isinstance(header, list):
        raise PayloadError("packed payload header is not a list of [name, dtype, shape]")
    if len(header) > MAX_PACKED_ARRAYS:
        raise PayloadError(f"packed payload names {len(header)} arrays (at most {MAX_PACKED_ARRAYS})")
    entries = []
    for entry in header:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[1], str)
                and isinstance(entry[2], list) and len(entry[2]) <= 8
                and all(isinstance(d, int) and not isinstance(d, bool) for d in entry[2])):
            raise PayloadError(f"packed payload header entry {str(entry)[:60]} is not [name, dtype, [int, ...]]")
        entries.append((entry[0], entry[1], entry[2]))
    out, pos = {}, 4 + n
    for name, dt, shape in entries:
        if dt not in PACK_DTYPES:
            raise PayloadError(f"packed array {name!r} has dtype {dt!r}; allowed: {', '.join(PACK_DTYPES)}")
        if any(d < 0 for d in shape):
            raise PayloadError(f"packed array {name!r} has a negative dimension {shape}")
        size = math.prod(shape) * np.dtype(dt).itemsize  # Python ints: no overflow
        if pos + size > blob.size:
            raise PayloadError(f"packed payload is truncated (array {name!r} needs {size} bytes)")
        out[name] = blob[pos:pos + size].copy().view(dt).reshape(shape)
        pos += size
    if pos != blob.size:
        raise PayloadError(f"packed payload has {blob.size - pos} trailing bytes")
    return out
