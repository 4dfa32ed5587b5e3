"""Print lists of row dicts as console tables (rich)."""

from __future__ import annotations


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
