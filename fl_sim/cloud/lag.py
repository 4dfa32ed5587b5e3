"""The cloud off the critical path (``strategy.cloud_lag = 1``): round ``r``'s cloud work (the teacher's labels
and the tiers' AKD, on the cloud's Ray actors) runs in a thread of the cloud process while the devices work
on round ``r + 1``; round ``r + 1``'s update collects and commits it (DWC, versions, replay), so a device
receives round ``r``'s update a round later. A real cloud works this way beside devices that do not wait.

What is in flight is the round's decoded uploads, a pure input: a checkpoint holds them (``tensors``,
``state``), and a resumed run starts that work again from them, with the same result as the uninterrupted run.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from fl_sim.cloud.actors import BACKGROUND
from fl_sim.cloud.uploads import Uploads

GROUP = "cloud_lag"  # the checkpoint's tensor group of the uploads in flight


@dataclass
class InFlight:
    round: int
    uploads: Uploads
    future: Future | None = None  # None: restored from a checkpoint, not started yet


class CloudLag:
    """At most one round's cloud work in flight, run by ``work(round, uploads, threads)`` in a thread (its
    torch thread count read here, when it is submitted: the count is the process's, and the loop's evaluation
    changes it). A job that fails on an actor there is an error, not a rerun in this process
    (``fl_sim.cloud.actors.BACKGROUND``), whose models the loop is using."""

    def __init__(self, work):
        self.work = work
        self._pool: ThreadPoolExecutor | None = None
        self.in_flight: InFlight | None = None

    def submit(self, server_round: int, uploads: Uploads) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud-lag")
        threads = torch.get_num_threads()
        self.in_flight = InFlight(server_round, uploads, self._pool.submit(self._run, server_round, uploads, threads))

    def _run(self, server_round: int, uploads: Uploads, threads: int):
        BACKGROUND.active = True
        try:
            return self.work(server_round, uploads, threads)
        finally:
            BACKGROUND.active = False

    def resume(self) -> None:
        """Start the work a checkpoint left in flight."""
        if self.in_flight is not None and self.in_flight.future is None:
            self.submit(self.in_flight.round, self.in_flight.uploads)

    def take(self):
        """``(round, uploads, result)`` of the work in flight (waiting for it), or ``None``; a failure in the
        work is raised here."""
        if self.in_flight is None:
            return None
        self.resume()
        f, self.in_flight = self.in_flight, None
        return f.round, f.uploads, f.future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # ---------------------------------------------------------------- checkpoint
    def state(self) -> dict:
        f = self.in_flight
        if f is None:
            return {GROUP: None}
        return {GROUP: {"round": f.round, "questions": f.uploads.questions, "rejected": f.uploads.rejected,
                        "has_image": [im is not None for im in f.uploads.images]}}

    def tensors(self) -> dict[str, torch.Tensor] | None:
        f = self.in_flight
        if f is None:
            return None
        shown = [im for im in f.uploads.images if im is not None]
        images = torch.from_numpy(np.stack(shown)) if shown else torch.zeros(0, dtype=torch.uint8)
        return {"vis": f.uploads.vis, "images": images}

    def load(self, state: dict, tensors: dict[str, torch.Tensor] | None) -> None:
        s = state.get(GROUP)
        if not s or tensors is None:
            self.in_flight = None
            return
        shown = iter(tensors["images"].numpy())
        images = [next(shown) if has else None for has in s["has_image"]]
        self.in_flight = InFlight(int(s["round"]), Uploads(tensors["vis"], list(s["questions"]), images,
                                                           int(s["rejected"])))
