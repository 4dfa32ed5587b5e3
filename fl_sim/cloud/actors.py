"""The cloud's independent work side by side on Ray actors: the tiers' AKD rounds (``fl_sim.cloud.tier_job``)
and the teacher's extra questions (``fl_sim.cloud.question_job``).

CD-CCA's cloud trains every tier's adapters each round, and the tiers are independent. At these model sizes
torch's kernels gain little from a second thread and nearly 2x from a second process (docs/notes.md), so
``run(jobs)`` gives job ``i`` to executor ``i % (actors + 1)``, executor 0 being the calling process, the
others single-threaded Ray actors that load each model once and keep it. They live in the Ray instance the
simulation runs on (the fleet's: a cluster's, with ``--ray-address``), created on first use; outside one
(``flwr run``'s server process, a plain script) every job runs here. A job runs with the threads it names, so
it gives the same result on an actor as here, bitwise (``tests/unit/cloud/test_cloud_actors.py``). An actor that
dies or a job that fails on one is logged and the job runs here; a dead actor is replaced on the next round.

Ray carries the jobs and results between processes (its own serialisation, inside the engine); nothing of
it crosses the simulated wire or lands on disk.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def default_cloud_workers(n_jobs: int, on_cpu: bool) -> int:
    """``strategy.akd.workers = "auto"``: one actor per job beyond the first on a CPU with 2+ cores (a job per
    process, the cores time-sliced when jobs outnumber them); none on a GPU or a single core."""
    return max(0, n_jobs - 1) if on_cpu and (os.cpu_count() or 1) >= 2 else 0


def workers_for(akd_cfg, n_tiers: int, device_type: str, bf16: bool) -> int:
    """The cloud's actors for ``strategy.akd`` (``workers``) when the cloud runs on ``device_type`` ("cpu",
    "cuda"), with bf16 autocast or not: on a CPU cloud in fp32 only, where an actor computes what the cloud
    process would; none without AKD steps."""
    if device_type != "cpu" or bf16 or not akd_cfg.steps:
        return 0
    return default_cloud_workers(n_tiers, True) if akd_cfg.workers == "auto" else akd_cfg.workers


def _run_here(job):
    from fl_sim.cloud import question_job, tier_job

    return (tier_job.run if isinstance(job, tier_job.TierJob) else question_job.run)(job)


class CloudWorker:
    """One actor's side: run the jobs it is handed (its models stay loaded between them)."""

    def __init__(self):
        from fl_sim.quiet import quiet_libraries

        quiet_libraries()

    def run(self, job):
        return _run_here(job)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


class CloudActors:
    """Up to ``n`` ``CloudWorker`` actors in the running Ray instance. They take no CPU of Ray's (the fleet's
    actors hold every CPU between rounds, idle while the cloud works)."""

    def __init__(self, n: int):
        self.n = n
        self._actors: list = []
        self.nodes: list[str] = []  # the Ray node each actor runs on

    def _ensure(self) -> list:
        import ray

        if not ray.is_initialized():
            return []
        self._actors = [a for a in self._actors if a is not None]
        if len(self._actors) < self.n:
            while len(self._actors) < self.n:
                self._actors.append(ray.remote(num_cpus=0, max_restarts=0)(CloudWorker).remote())
            self.nodes = ray.get([a.node_id.remote() for a in self._actors])
        return self._actors

    def run(self, jobs: list) -> list:
        """Every job's result in the jobs' order."""
        import ray
        from ray.exceptions import RayError

        actors = self._ensure() if self.n else []
        k = len(actors) + 1
        futures = {j: (j % k - 1, actors[j % k - 1].run.remote(job)) for j, job in enumerate(jobs) if j % k}
        results = {j: _run_here(job) for j, job in enumerate(jobs) if j not in futures}
        for j, (a, future) in futures.items():
            try:
                results[j] = ray.get(future)
            except RayError as exc:
                why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                log.warning("cloud actor %d failed (%s); its job runs in the cloud process", a, why)
                if isinstance(exc, ray.exceptions.RayActorError):
                    self._actors[a] = None  # replaced next time
                results[j] = _run_here(jobs[j])
        return [results[j] for j in range(len(jobs))]

    def close(self) -> None:
        import ray

        for a in self._actors:
            if a is not None and ray.is_initialized():
                ray.kill(a)
        self._actors = []
