"""Device profiles and the FedScale-style cost model.

A profile fixes a device's tier, speed, bandwidth, availability and domain schedule. Profiles are drawn
from the fleet config with the run seed (one independent stream per device) or loaded from a trace
file (CSV or JSON with the same field names).

Cost model (virtual seconds), after FedScale's ``client_metadata``::

    compute_s  = (n_infer + 3 * n_train) * compute_ms_per_sample / 1000   # backward ~ 2x forward
    comm_s     = 8 * (down_bytes / downlink_kbps + up_bytes / uplink_kbps) / 1000
    available  = ((t + phase_s) mod active_period_s) < active_fraction * active_period_s
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np

from fl_sim import FlSimError
from fl_sim.config import FleetConfig
from fl_sim.fleet import schedule
from fl_sim.world.domains import domain_error


@dataclass(frozen=True)
class DeviceProfile:
    device_id: int
    tier: str
    compute_ms_per_sample: float
    uplink_kbps: float
    downlink_kbps: float
    active_period_s: float
    active_fraction: float
    phase_s: float
    shift_round: int
    shift_domain: str
    schedule: str = ""  # stages (``fl_sim.fleet.schedule``); when set, shift_round/shift_domain only describe its 2nd

    def available(self, t_s: float) -> bool:
        return (t_s + self.phase_s) % self.active_period_s < self.active_fraction * self.active_period_s

    def mix_at(self, server_round: int) -> list[tuple[str, float]]:
        """``[(domain, share)]`` of the samples this device sees in ``server_round``."""
        if self.schedule:
            return schedule.mix_at(_stages(self.schedule), server_round)
        return [("source" if server_round < self.shift_round else self.shift_domain, 1.0)]

    def domains(self) -> list[str]:
        """Every domain this device meets, in order (repeats removed)."""
        if self.schedule:
            return list(dict.fromkeys(s.domain for s in _stages(self.schedule)))
        return ["source", self.shift_domain]

    def domain_at(self, server_round: int) -> str:
        """The domain of most of this device's samples in ``server_round`` (the newer one on a tie)."""
        mix = self.mix_at(server_round)
        return max(reversed(mix), key=lambda m: m[1])[0]

    def compute_s(self, n_infer: int, n_train: int) -> float:
        return (n_infer + 3 * n_train) * self.compute_ms_per_sample / 1000

    def comm_s(self, down_bytes: int, up_bytes: int) -> float:
        return 8 * (down_bytes / self.downlink_kbps + up_bytes / self.uplink_kbps) / 1000


@lru_cache(maxsize=4096)
def _stages(text: str) -> tuple:
    return schedule.parse(text)


def device_rng(seed: int, device_id: int, *stream: int) -> np.random.Generator:
    """The random stream of one device (and optionally one round/purpose), independent of all others."""
    return np.random.default_rng(np.random.SeedSequence([seed, 1_000_003, device_id, *stream]))


def _draw(rng, r) -> float:
    return float(np.exp(rng.uniform(np.log(r.low), np.log(r.high))))


def make_fleet(cfg: FleetConfig, tiers: list[str], seed: int, declared: tuple[str, ...] = ()) -> list[DeviceProfile]:
    """Draw ``cfg.num_devices`` profiles (or load ``cfg.trace``)."""
    if cfg.trace:
        return load_trace(cfg.trace, tiers, declared)
    shares = cfg.tiers or {t: 1.0 for t in tiers}
    tier_names, tier_p = list(shares), np.array(list(shares.values()), float)
    dom_names, dom_p = list(cfg.shift_domains), np.array(list(cfg.shift_domains.values()), float)
    out = []
    for i in range(cfg.num_devices):
        rng = device_rng(seed, i, 0)
        period = _draw(rng, cfg.active_period_s)
        out.append(DeviceProfile(
            device_id=i,
            tier=str(rng.choice(tier_names, p=tier_p / tier_p.sum())),
            compute_ms_per_sample=_draw(rng, cfg.compute_ms_per_sample),
            uplink_kbps=_draw(rng, cfg.uplink_kbps),
            downlink_kbps=_draw(rng, cfg.downlink_kbps),
            active_period_s=period,
            active_fraction=min(1.0, _draw(rng, cfg.active_fraction)),
            phase_s=float(rng.uniform(0, period)),
            **(_drawn_schedule(cfg.schedule, device_rng(seed, i, 4)) if cfg.schedule else {
                "shift_round": int(rng.integers(cfg.shift_round[0], cfg.shift_round[1] + 1)),
                "shift_domain": str(rng.choice(dom_names, p=dom_p / dom_p.sum()))}),
        ))
    return out


def _drawn_schedule(cfg, rng: np.random.Generator) -> dict:
    """``schedule`` (and the shift fields describing its second stage) drawn from ``rng``."""
    stages = schedule.draw(rng, cfg.first, cfg.domains, cfg.stages, cfg.stage_rounds, cfg.ramp_rounds,
                           cfg.return_to_first)
    second = stages[1] if len(stages) > 1 else stages[0]
    return {"schedule": schedule.format_stages(stages), "shift_round": second.start, "shift_domain": second.domain}


def _strict_int(v) -> int:
    """An int from a JSON number or a CSV string with an integral value (``2``, ``2.0``); ``ValueError`` for
    booleans, fractions and text."""
    if isinstance(v, bool):
        raise ValueError(v)
    if isinstance(v, int):
        return v
    f = float(v)  # ValueError for text
    if not f.is_integer():
        raise ValueError(v)
    return int(f)


POSITIVE = ("compute_ms_per_sample", "uplink_kbps", "downlink_kbps", "active_period_s")


def load_trace(path: str | Path, tiers: list[str], declared: tuple[str, ...] = ()) -> list[DeviceProfile]:
    """Profiles from a CSV (header = field names) or JSON (list of objects) trace file.

    Every problem is a one-line ``FlSimError`` naming the file, and the row and column where it has one.
    Rows are numbered from 1 (a CSV's header is not a row).
    """
    import math

    path = Path(path)
    where = f"fleet trace {path}"
    if not path.is_file():
        raise FlSimError(f"{where} not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FlSimError(f"{where} cannot be read: {exc}") from None
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except ValueError as exc:
            raise FlSimError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise FlSimError(f"{where} must be a JSON list of objects, one per device")
    elif path.suffix == ".csv":
        try:
            rows = list(csv.DictReader(text.splitlines()))
        except csv.Error as exc:
            raise FlSimError(f"{where} is not a readable CSV file: {exc}") from None
        if any(None in r or None in r.values() for r in rows):
            bad = next(n for n, r in enumerate(rows, 1) if None in r or None in r.values())
            raise FlSimError(f"{where} row {bad}: its number of values differs from the header's")
    else:
        raise FlSimError(f"{where} must be .csv or .json, got {path.name}")
    if not rows:
        raise FlSimError(f"{where} holds no devices")
    names = {f.name: f.type for f in fields(DeviceProfile)}
    out = []
    for n, row in enumerate(rows, 1):
        row = {"schedule": ""} | row  # optional column
        missing, extra = sorted(set(names) - set(row)), sorted(set(row) - set(names))
        if missing or extra:
            raise FlSimError(f"{where} row {n}: " + "; ".join(
                ([f"missing column(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown column(s) {', '.join(extra)}"] if extra else [])))
        values = {}
        for k, kind in names.items():
            v = row[k]
            try:
                if kind == "int":
                    values[k] = _strict_int(v)
                elif kind == "float":
                    if isinstance(v, bool):
                        raise ValueError
                    values[k] = float(v)
                    if not math.isfinite(values[k]):
                        raise FlSimError(f"{where} row {n} column {k}: {v!r} is not a finite number")
                else:
                    if not isinstance(v, str) or (not v and k != "schedule"):
                        raise ValueError
                    values[k] = v
            except (ValueError, TypeError, OverflowError):
                want = {"int": "an integer", "float": "a number"}.get(kind, "a non-empty string")
                raise FlSimError(f"{where} row {n} column {k}: expected {want}, got {v!r}") from None
        p = DeviceProfile(**values)
        for k in POSITIVE:
            if getattr(p, k) <= 0:
                raise FlSimError(f"{where} row {n} column {k}: must be > 0, got {getattr(p, k)}")
        if not 0 < p.active_fraction <= 1:
            raise FlSimError(f"{where} row {n} column active_fraction: must be in (0, 1], got {p.active_fraction}")
        if p.phase_s < 0 or p.shift_round < 1:
            col = "phase_s" if p.phase_s < 0 else "shift_round"
            raise FlSimError(f"{where} row {n} column {col}: must be {'>= 0' if col == 'phase_s' else '>= 1'}, "
                             f"got {getattr(p, col)}")
        if p.tier not in tiers:
            raise FlSimError(f"{where} row {n} column tier: unknown tier {p.tier!r}; allowed: {', '.join(tiers)}")
        if p.schedule:
            try:
                schedule.parse(p.schedule, lambda d: domain_error(d, declared))
            except ValueError as exc:
                raise FlSimError(f"{where} row {n} column schedule (device {p.device_id}): {exc}") from None
        if (why := domain_error(p.shift_domain, declared)) is not None:
            raise FlSimError(f"{where} row {n} column shift_domain: {why}")
        out.append(p)
    ids = [p.device_id for p in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise FlSimError(f"{where} column device_id: device {dup} appears twice")
    if ids != list(range(len(out))):
        raise FlSimError(f"{where} column device_id: ids must be 0..{len(out) - 1} in order")
    return out


def save_trace(profiles: list[DeviceProfile], path: str | Path) -> None:
    Path(path).write_text(json.dumps([asdict(p) for p in profiles], indent=1))


def load_participation(path: str | Path, rounds: int, fleet: list[DeviceProfile],
                       clients_per_round: int) -> dict[int, tuple[list[int], list[int]]]:
    """``round -> (sampled, kept device ids)`` recorded by an earlier run of the same fleet (``fleet.replay``).

    ``path`` is a run directory or its ``results.jsonl``; it must cover rounds ``1..rounds``, its
    ``fleet.json`` must equal ``fleet``, and it must keep at most ``clients_per_round`` devices a round.
    """
    path = Path(path)
    file = path / "results.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise FlSimError(f"fleet.replay: no results.jsonl at {path}")
    trace = file.parent / "fleet.json"
    if not trace.is_file():
        raise FlSimError(f"fleet.replay: no fleet.json beside {file}")
    try:
        recorded = json.loads(trace.read_text())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FlSimError(f"fleet.replay: {trace} cannot be read: {exc}") from None
    if not isinstance(recorded, list) or [{"schedule": ""} | r if isinstance(r, dict) else r for r in recorded] != [
            asdict(p) for p in fleet]:
        raise FlSimError(f"fleet.replay: {trace} is another fleet than this run's (different seed or fleet settings)")
    out = {}
    try:
        lines = file.read_text().splitlines()
    except (OSError, ValueError) as exc:
        raise FlSimError(f"fleet.replay: {file} cannot be read: {exc}") from None
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            r, sampled, kept = int(rec["round"]), list(rec["sampled_ids"]), list(rec["participant_ids"])
        except (ValueError, TypeError, OverflowError) as exc:
            raise FlSimError(f"fleet.replay: {file} line {n} is not a round record ({exc})") from None
        except KeyError as exc:
            raise FlSimError(f"fleet.replay: {file} line {n} lacks {exc.args[0]!r}; only runs made since "
                             "fl-sim records participant_ids can be replayed (re-run it)") from None
        if bad := [i for i in sampled + kept if not isinstance(i, int) or not 0 <= i < len(fleet)]:
            raise FlSimError(f"fleet.replay: {file} round {r}: device id {bad[0]!r} is not in 0..{len(fleet) - 1}")
        if len(set(sampled)) != len(sampled) or len(set(kept)) != len(kept) or not set(kept) <= set(sampled):
            raise FlSimError(f"fleet.replay: {file} round {r}: repeated device ids, or kept devices not sampled")
        if len(kept) > clients_per_round:
            raise FlSimError(f"fleet.replay: {file} round {r} kept {len(kept)} devices, more than this run's "
                             f"clients_per_round ({clients_per_round})")
        out[r] = (sampled, kept)
    if missing := [r for r in range(1, rounds + 1) if r not in out]:
        raise FlSimError(f"fleet.replay: {file} has no record of round(s) {missing[:5]} (it has {len(out)} rounds)")
    return out
