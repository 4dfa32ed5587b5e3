"""``--set KEY=VALUE`` overrides of an experiment's settings, as dotted keys with TOML values."""

from __future__ import annotations

from fl_sim import FlSimError


def parse_set_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as dotted-key overrides; values are TOML (a bare word is a string)."""
    import tomllib

    out = {}
    for item in items or []:
        if "=" not in item:
            raise FlSimError(f"--set expects KEY=VALUE (e.g. strategy.name=fedprox), got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw  # a bare string
    return out
