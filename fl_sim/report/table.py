"""Console tables (rich) of row dicts, and byte counts for people."""

from __future__ import annotations

import math

BINARY = (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20))
DECIMAL = (("GB", 1e9), ("MB", 1e6), ("KB", 1e3))


def human_bytes(n: float, binary: bool = False) -> str:
    """``n`` bytes in the largest unit it reaches: decimal (payloads, ``1.0 KB``) or binary (memory and disk,
    ``1.0 GiB``); ``—`` for NaN."""
    if math.isnan(n):
        return "—"
    for unit, size in BINARY if binary else DECIMAL:
        if n >= size:
            return f"{n / size:,.1f} {unit}" if binary else f"{n / size:.1f} {unit}"
    return f"{n / 1024:,.0f} KiB" if binary else f"{n:.0f} B"


def print_rows(rows: list[dict], title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        return
    table = Table(title=title or None)
    for col in rows[0]:
        table.add_column(str(col), justify="left" if isinstance(rows[0][col], str) else "right")
    for r in rows:
        table.add_row(*("-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()))
    Console(width=160).print(table)
