"""Which DWC version each device holds, and the downlink that takes it to its tier's latest.

A device receives the chain of stored payloads from the version it holds to its tier's latest (``dwc_chain``,
a list of ``bytes`` in its task record: Flower frames an Array with about 450 bytes and a record with about
150, a ``bytes`` value in a record with about 20), or a dense refresh (``dwc_full``) when that is smaller, or
after its last downlink failed (a device that missed rounds catches up exactly).
"""

from __future__ import annotations

import logging

from fl_sim.protocol.device_task import Downlink
from fl_sim.protocol.records import config_value_bytes, payload_bytes, to_array_record
from fl_sim.protocol.version_store import VersionStore

log = logging.getLogger(__name__)


class DeviceVersions:
    def __init__(self, tiers: list[str], store: VersionStore):
        self.store = store
        self.latest = {t: 0 for t in tiers}  # each tier's latest version
        self.held: dict[int, int] = {}  # device id -> the version it holds (0 when absent)
        self.needs_full: set[int] = set()  # devices whose last downlink failed: send them a dense refresh
        self.rejected = {"uploads": 0, "downlink": 0}  # counts over the run
        self._chains: dict = {}  # (tier, held, latest) -> records, for this round

    def of(self, device_id: int) -> int:
        return self.held.get(device_id, 0)

    def new_round(self) -> None:
        self._chains = {}

    def downlink(self, device_id: int, tier: str, weights: dict) -> Downlink:
        """The cheaper of the payload chain ``held -> latest`` and a dense refresh of ``weights`` (what the
        tier's devices hold now), cached per tier and version pair."""
        u, v = self.of(device_id), self.latest[tier]
        if u == v:
            return Downlink()
        if device_id in self.needs_full:
            return Downlink({"dwc_full": to_array_record(weights)})
        key = (tier, u, v)
        if key not in self._chains:
            chain = self.store.chain(tier, u, v)
            full = to_array_record(weights)
            small = config_value_bytes("dwc_chain", chain) <= payload_bytes(full)
            self._chains[key] = Downlink(task_values={"dwc_chain": chain}) if small else Downlink({"dwc_full": full})
        return self._chains[key]

    def absorb(self, replied: list, sent: dict, server_round: int) -> int:
        """Record the version each replying device holds now (``replied``: ``[(device, reply, metrics)]``;
        ``sent``: device -> the ``Settings`` of its task). Returns how many rejected their downlink."""
        rejected = 0
        for dev, rep, m in replied:  # every device that answered applied (or rejected) its downlink
            held, target = sent[dev].held_version, sent[dev].target_version
            version = int(m["version"])
            if m["downlink_rejected"] or version not in (held, target, 0):
                rejected += 1
                reason = rep.content["status"]["downlink_error"] if "status" in rep.content else f"version {version}"
                log.warning("round %d: device %d rejected its downlink: %s", server_round, dev, reason)
                self.needs_full.add(dev)
            else:
                self.needs_full.discard(dev)
            if version in (held, target, 0):
                self.held[dev] = version
        self.rejected["downlink"] += rejected
        return rejected

    def state(self) -> dict:
        return {"version": self.latest, "dev_version": {str(k): v for k, v in self.held.items()},
                "rejected": self.rejected, "needs_full": sorted(self.needs_full)}

    def load_state(self, state: dict) -> None:
        self.latest = {t: int(v) for t, v in state["version"].items()}
        self.held = {int(k): int(v) for k, v in state["dev_version"].items()}
        self.rejected = dict(state["rejected"])
        self.needs_full = set(state.get("needs_full", []))
