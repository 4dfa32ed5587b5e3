"""Experiment files: TOML read into an ``ExperimentConfig`` (paths relative to the file), a run's saved config
read back, and a config written out."""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path

from fl_sim import FlSimError
from fl_sim.config.experiment import ExperimentConfig, parse_config

PATH_KEYS = ("fleet.trace", "fleet.replay")  # files an experiment refers to


def _relative_to(folder: Path, value: str) -> str:
    p = Path(value).expanduser()
    return value if not value or p.is_absolute() else os.path.normpath(folder / p)


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """An experiment file: keys it leaves out take today's defaults. Relative paths in the file
    (``PATH_KEYS``) are relative to the file's folder; paths given as ``overrides`` to the current one."""
    path = Path(path)
    data = read_toml(path)
    here = path.parent.resolve()
    if isinstance(data.get("domains"), dict):  # datasets on disk, relative to the file too
        data["domains"] = {name: (dict(v) | {"path": _relative_to(here, v["path"])}
                                  if isinstance(v, dict) and isinstance(v.get("path"), str) else v)
                           for name, v in data["domains"].items()}
    models = data.get("models")
    if isinstance(models, dict):  # checkpoint directories, relative to the file too
        models = data["models"] = dict(models)
        if isinstance(models.get("teacher"), str):
            models["teacher"] = _relative_to(here, models["teacher"])
        if isinstance(models.get("tiers"), dict):
            tiers = models["tiers"] = dict(models["tiers"])
            for name, v in tiers.items():
                if isinstance(v, str):
                    tiers[name] = _relative_to(here, v)
                elif isinstance(v, dict) and isinstance(v.get("checkpoint"), str):
                    tiers[name] = dict(v) | {"checkpoint": _relative_to(here, v["checkpoint"])}
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            data[section] = dict(data[section]) | {key: os.path.normpath(os.path.join(path.parent.resolve(), value))}
    return parse_config(data, overrides)


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """A TOML file as a dict; a one-line ``FlSimError`` for anything that is not one."""
    path = Path(path)
    if path.is_dir():
        raise FlSimError(f"{what} {path} is a directory, not a TOML file")
    if not path.is_file():
        raise FlSimError(f"{what} not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FlSimError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise FlSimError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise FlSimError(f"{what} {path} is empty")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FlSimError(f"malformed TOML in {path}: {exc}") from None
    if not data:
        raise FlSimError(f"{what} {path} sets nothing (only comments)")
    return data


# Options whose default changed after they were added: a run's saved config.toml written before the option
# existed ran with the value here, not with today's default. (An option added with a default that keeps
# the old behaviour needs no entry: a saved config without it reads as that default.)
LEGACY_VALUES = {
    "strategy.akd.extra_questions": 0,  # saved configs without the key ran with no extra questions
}


def with_legacy_values(data: dict) -> dict:
    """A copy of a saved run config (TOML dict) with the ``LEGACY_VALUES`` of the options it predates."""
    data = copy.deepcopy(data)
    for dotted, value in LEGACY_VALUES.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                break
        else:
            node.setdefault(leaf, value)
    return data


def load_run_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """A run directory's saved ``config.toml``: what that run ran with (``LEGACY_VALUES`` for options it
    predates), so resuming it continues the same experiment."""
    return parse_config(with_legacy_values(read_toml(path)), overrides)


def to_toml(cfg: ExperimentConfig) -> str:
    import tomli_w

    return tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))
