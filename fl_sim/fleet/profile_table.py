"""The fleet's device profiles as numpy columns, for a process that looks up only the devices it runs.

A Ray worker emulates the few devices each round samples out of the whole registered fleet. Held as
``DeviceProfile`` objects the fleet costs a worker about 1 KB per registered device; held as columns (one
array per numeric field, each text field as one UTF-8 buffer with offsets) it costs the arrays' bytes, and
``table[i]`` rebuilds device ``i``'s profile when it is sampled.
"""

from __future__ import annotations

from dataclasses import astuple, fields

import numpy as np

from fl_sim.fleet.profiles import DeviceProfile

KINDS = {f.name: f.type for f in fields(DeviceProfile)}
DTYPES = {"int": np.int64, "float": np.float64}


class ProfileTable:
    """``len(table)`` profiles; ``table[i]`` is the ``DeviceProfile`` of device ``i``."""

    def __init__(self, profiles):
        rows = [astuple(p) for p in profiles]
        self.columns: dict[str, np.ndarray] = {}
        self.text: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (utf-8 bytes, offsets)
        for j, (name, kind) in enumerate(KINDS.items()):
            if kind in DTYPES:
                self.columns[name] = np.fromiter((r[j] for r in rows), DTYPES[kind], len(rows))
            else:
                encoded = [r[j].encode() for r in rows]
                offsets = np.zeros(len(rows) + 1, np.int64)
                np.cumsum([len(e) for e in encoded], out=offsets[1:])
                self.text[name] = (np.frombuffer(b"".join(encoded), np.uint8).copy(), offsets)
        self._n = len(rows)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> DeviceProfile:
        if not -self._n <= i < self._n:
            raise IndexError(f"device {i} is not in a fleet of {self._n}")
        i %= self._n
        values = {}
        for name, kind in KINDS.items():
            if kind in DTYPES:
                values[name] = self.columns[name][i].item()
            else:
                data, off = self.text[name]
                values[name] = data[off[i]:off[i + 1]].tobytes().decode()
        return DeviceProfile(**values)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.columns.values()) + sum(d.nbytes + o.nbytes for d, o in self.text.values())
