"""cdcca: CD-CCA on the fleet. Devices upload what they are unsure of (UTS), the cloud distils the
teacher into per-tier adapters (AKD), and sends back compressed adapter updates (DWC).

Device half: ``clients/cdcca_device.py``. Round ``r``:

1. Each sampled device receives the DWC downlink that takes the version it holds to its tier's latest
   (``fl_sim.cloud.device_versions``), applies it, answers its stream, and uploads the UTS selection.
2. The cloud, in steps (``fl_sim.cloud``): decode the uploads (malformed ones are rejected, logged and
   counted), let the teacher label them once (pseudo-labels, logits, hidden states), distil into each tier's
   cloud copy with AKD on this round's targets plus a replay buffer of earlier ones, and compress each
   tier's change with DWC into version ``v + 1``: what its devices will hold, and what evaluation measures.
   Versions live in a ``VersionStore`` (``<run dir>/dwc``) that the devices read the weights they hold from.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from clients.cdcca_device import CDCCADevice, CDCCADeviceSettings
from fl_sim.cloud import compression, distillation, labelling
from fl_sim.cloud.accounting import Laps, round_means, virtual_seconds
from fl_sim.cloud.actors import ActorGroup, teacher_actors
from fl_sim.cloud.device_versions import DeviceVersions
from fl_sim.cloud.distillation import TierState
from fl_sim.cloud.lag import GROUP, CloudLag
from fl_sim.cloud.uploads import decode_uploads, upload_limits
from fl_sim.cloud.views import TEACHER, Views
from fl_sim.mechanisms import akd
from fl_sim.mechanisms.replay import ReplayBuffer
from fl_sim.models import placement
from fl_sim.protocol.version_store import VersionStore
from fl_sim.server.round import Absorbed
from fl_sim.server.strategy import FleetStrategy

log = logging.getLogger(__name__)


class CDCCA(FleetStrategy):
    name = "cdcca"
    device = CDCCADevice
    REQUIRED_METRICS = FleetStrategy.REQUIRED_METRICS + ("version", "downlink_rejected", "uploaded")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.uts, self.akd, self.dwc = self.strategy_cfg.uts, self.strategy_cfg.akd, self.strategy_cfg.dwc
        self.views = Views(ctx.model_paths, self.tiers, self.catalog, self.akd, self.cfg.seed)
        self.versions = DeviceVersions(self.tiers, VersionStore(self.store_dir(ctx.run_dir)))
        self.buffers: dict[str, ReplayBuffer] = {}  # per view: "teacher", or a tier's own
        c, precision = self.cfg.cloud, self.cfg.simulation.precision
        self.actors = distillation.akd_actors(self.akd, c, precision, len(self.tiers),  # Ray actors, started
                                              lag=bool(self.strategy_cfg.cloud_lag))
        self.teachers = ActorGroup("teacher", teacher_actors(c, placement.current().type, placement.autocasts()),
                                   c.options("teacher"), local=False, precision=precision,
                                   start_timeout_s=c.start_timeout_s)  # on first use
        self.lag = CloudLag(self.cloud_work)  # strategy.cloud_lag: a round's cloud work in flight
        self._warned_lag = False

    def start_cloud(self):
        for group in (self.teachers, self.actors):
            group.start()
        self.lag.resume()  # the work a checkpoint left in flight

    def stop_cloud(self):
        self.lag.close()
        for group in (self.teachers, self.actors):
            group.close()

    @classmethod
    def store_dir(cls, run_dir):
        return (Path(run_dir) / "dwc").resolve()

    # ------------------------------------------------------------- state: cloud copy, held weights, residual
    def init_state(self):
        state = {}
        for t in self.tiers:
            init = self.initial_state(t)
            state[f"cloud.{t}"] = {k: v.clone() for k, v in init.items()}
            state[f"held.{t}"] = {k: v.clone() for k, v in init.items()}
            state[f"ef.{t}"] = {}
            torch.manual_seed(self.cfg.seed)
            align = torch.nn.Linear(self.views.width(t), self.views.width(TEACHER))
            state[f"align.{t}"] = {k: v.detach().clone() for k, v in align.state_dict().items()}
        return state

    def buffer(self, view: str) -> ReplayBuffer:
        if view not in self.buffers:
            self.buffers[view] = ReplayBuffer(self.akd.replay, self.cfg.seed)
        return self.buffers[view]

    def device_weights(self, tier):
        return self.state[f"held.{tier}"]

    def checkpoint_state(self):
        for view, buf in self.buffers.items():
            self.state["replay" if view == TEACHER else f"replay.{view}"] = buf.state()
        flight = self.lag.tensors()
        if flight is None:
            self.state.pop(GROUP, None)
        else:
            self.state[GROUP] = flight
        return super().checkpoint_state() | self.versions.state() | self.lag.state()

    def restore(self, state, tensors):
        r = super().restore(state, tensors)
        self.versions.load_state(state)
        self.lag.load(state, tensors.get(GROUP))
        self.state.pop(GROUP, None)
        for group, t in tensors.items():
            if group == "replay" or group.startswith("replay."):
                self.buffer(TEACHER if group == "replay" else group.split(".", 1)[1]).load_state(t)
        return r

    # ------------------------------------------------------------- device half and downlink
    def device_settings(self, p, server_round) -> CDCCADeviceSettings:
        v = self.versions
        return CDCCADeviceSettings(held_version=v.of(p.device_id), target_version=v.latest[p.tier],
                                   uts=self.views.uts_for(p.tier, self.uts))

    def device_downlink(self, p, server_round):
        return self.versions.downlink(p.device_id, p.tier, self.device_weights(p.tier))

    def plan_round(self, server_round):
        self.versions.new_round()
        return super().plan_round(server_round)

    def upload_limits(self, n_tokens: int) -> dict:
        """What a device was asked to upload (``fl_sim.cloud.uploads.upload_limits``)."""
        return upload_limits(self.uts, self.cfg.fleet.samples_per_round, n_tokens)

    # ------------------------------------------------------------- the cloud's round: its steps in order
    def update(self, server_round, kept, replied, plan):
        """Decode the round's uploads, then the cloud's work on them: here, or (``cloud_lag``) in flight
        while the next round's devices work, committed by that round's update."""
        t0 = time.time()
        rejected_down = self.versions.absorb(replied, plan.settings, server_round)
        tiers_of = {dev: self.ctx.fleet[dev].tier for dev, _, _ in kept}
        uploads = decode_uploads(kept, tiers_of, self.views, self.uts, self.akd.max_new_tokens,
                                 self.cfg.fleet.samples_per_round, server_round)
        self.versions.rejected["uploads"] += uploads.rejected
        figures = {"rejected_uploads": uploads.rejected, "rejected_downlinks": rejected_down}
        decode_s = time.time() - t0
        behind = self.lag.take()  # the previous round's cloud work, when it lags
        lagged, behind_s = ({}, 0.0) if behind is None else self.commit(*behind)
        lagged |= {"cloud_round": behind[0]} if behind is not None else {}
        if self.lags(server_round):
            for view in self.views.used():  # every buffer made here, before the work reads them
                self.buffer(view)
            self.lag.submit(server_round, uploads)
            return Absorbed(figures | lagged, 0.0, behind_s)
        done, cloud_s = self.commit(server_round, uploads, self.cloud_work(server_round, uploads,
                                                                            torch.get_num_threads()))
        done["cloud_phases_s"] = {"decode": decode_s} | done["cloud_phases_s"]
        done["cloud_wall_s"] += decode_s
        if lagged:  # the last round of a lagging cloud: the previous round's work, then this one's
            done |= {"cloud_round": server_round, "lagged_cloud": lagged}
        return Absorbed(figures | done, cloud_s, behind_s)

    def lags(self, server_round: int) -> bool:
        """Whether round ``server_round``'s cloud work runs beside the next round (``strategy.cloud_lag``; never
        in the last round, nor without the cloud's actors: then it would share this process's models)."""
        if not self.strategy_cfg.cloud_lag or server_round >= self.cfg.rounds:
            return False
        if not self.actors.start() or not self.teachers.start():
            if not self._warned_lag:
                log.warning("strategy.cloud_lag = 1 needs the teacher and the tiers' AKD on Ray actors "
                            "(cloud.teacher_replicas, strategy.akd.workers; on a CUDA cloud cloud.teacher_gpus and "
                            "cloud.akd_gpus); without them the cloud works between rounds")
                self._warned_lag = True
            return False
        return True

    def cloud_work(self, server_round: int, uploads, threads: int):
        """The teacher's labels and the tiers' AKD on ``uploads`` (the cloud's actors do the heavy part) with
        ``threads`` torch threads: ``(labels, {tier: TierResult}, phase seconds)``. Reads the cloud's state,
        changes none of it."""
        lap = Laps()
        labels = labelling.label(self.views, self.akd, uploads, self.cfg.seed, server_round, threads, self.teachers,
                                 lap)
        new = labels.by_view
        training = [t for t in self.tiers if self.akd.steps and (akd.size(new.get(self.views.of(t), {}))
                                                                 or len(self.buffer(self.views.of(t))))]
        threads = 1 if self.actors.n and len(training) > 1 else threads  # side by side: 1 each
        jobs = [self.tier_job(t, new.get(self.views.of(t), {}), server_round, threads) for t in training]
        results = dict(zip(training, self.actors.run(jobs)))  # side by side on the actors (and here)
        lap("akd")
        return labels, results, lap.phases

    def commit(self, server_round: int, uploads, work) -> tuple[dict, float]:
        """DWC of each tier's accepted AKD result into its next version, and the round's targets into the
        replay buffers: the cloud's figures and virtual seconds."""
        labels, results, phases = work
        lap = Laps()
        new = labels.by_view
        figures = {}
        for tier, result in results.items():
            if not distillation.accepted(result, tier, server_round):
                continue
            before = self.state[f"cloud.{tier}"]
            self.state[f"cloud.{tier}"], self.state[f"align.{tier}"] = result.cloud, result.align
            figures[tier] = result.losses | self.compress(tier, before, result.cloud)
        lap("dwc")
        for view, targets in new.items():
            self.buffer(view).add(targets)
        lap("replay")
        placement.release()
        out = {"uploaded_samples": len(uploads.questions), "extra_questions": labels.extra_asked,
               "distilled_samples": sum(akd.size(t) for t in new.values()), "replay_size": len(self.buffer(TEACHER)),
               "akd_tier_s": {t: r.seconds for t, r in results.items()},  # each tier's training, side by side
               # each tier's new rows this round (0: the tier was not distilled on this round's uploads) and
               # the rows that did not fit its positions (a tier that reads text its own way)
               "akd_rows": {t: akd.size(new.get(self.views.of(t), {})) for t in self.tiers},
               "akd_unfit_rows": {t: labels.unfit.get(self.views.of(t), 0) for t in self.tiers}}
        out |= round_means(figures)
        phases = phases | lap.phases
        out |= {"cloud_wall_s": sum(phases.values()), "cloud_phases_s": phases}
        nodes = {g.kind: list(g.nodes) for g in (self.teachers, self.actors) if g.nodes}
        if nodes:
            out["cloud_actor_nodes"] = nodes  # where the cloud's actors run (Ray node ids)
        captioned = len(uploads.questions) if self.akd.extra_questions else 0
        return out, virtual_seconds(self.akd, labels.taught, len(figures), captioned)

    def tier_job(self, tier: str, new: dict, server_round: int, threads: int):
        view = self.views.of(tier)
        state = TierState(self.state[f"cloud.{tier}"], self.state[f"align.{tier}"], self.state[f"ef.{tier}"])
        return distillation.tier_job_for(self.ctx.model_paths[tier], self.strategy_cfg.adapters(), self.akd, self.dwc,
                                         state, new, self.buffer(view), self.views.anchor(view), self.cfg.seed,
                                         server_round, self.tiers.index(tier), self.payload_seed(tier), threads)

    def payload_seed(self, tier: str) -> int:
        return compression.payload_seed(self.cfg.seed, self.tiers.index(tier), self.versions.latest[tier] + 1)

    def compress(self, tier: str, before: dict, after: dict) -> dict:
        """DWC: version ``v + 1`` of what devices of ``tier`` hold, stored for them; returns its figures."""
        payload, self.state[f"ef.{tier}"], held, delta = compression.compress(
            self.dwc, self.state[f"ef.{tier}"], before, after, self.state[f"held.{tier}"], self.payload_seed(tier))
        v = self.versions.latest[tier] + 1
        self.versions.store.put(tier, v, payload, held)
        self.state[f"held.{tier}"] = held
        self.versions.latest[tier] = v
        return compression.figures(payload, delta, compression.checkpoint_bytes(self.ctx.model_paths[tier]))

