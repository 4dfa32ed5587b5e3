"""The cloud's work on Ray actors: the teacher's replicas (``fl_sim.cloud.teacher_jobs``), the tiers' AKD
(``fl_sim.cloud.tier_job``) and evaluation (``fl_sim.cloud.eval_job``), each a group of actors that load
their models once and keep them across rounds.

A job is a dataclass whose module has ``run(job)``; it names the threads it runs with, so it gives the same
result on an actor as in the cloud process, bitwise on a CPU in fp32 (``tests/unit/cloud/test_cloud_actors.py``).
A group with ``local`` gives job ``i`` to executor ``i % (actors + 1)``, executor 0 being the calling process
(at these model sizes torch's kernels gain little from a second thread and nearly 2x from a second process,
docs/notes.md); without it every job goes to an actor. The actors live in the Ray instance the simulation
runs on (the fleet's, a cluster's with ``--ray-address``), created on first use with the options of
``[cloud]`` (CPUs, GPU share, a custom resource that pins them to chosen nodes); outside one (``flwr run``'s
server process, a plain script) every job runs here. An actor that cannot start within
``cloud.start_timeout_s`` stops the run with one line naming what it asked for. An actor that dies (its node
lost) is replaced and its job retried on the new one: a job carries all the state it needs, so the round
gives what it would have. A job that fails on an actor is logged and run here.

Ray carries the jobs and results between processes (its own serialisation, inside the engine); nothing of
it crosses the simulated wire or lands on disk.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading

from fl_sim import FlSimError

log = logging.getLogger(__name__)

_RAY_OWN = ("CPU", "GPU", "memory", "object_store_memory", "accelerator_type", "node")  # not custom resources


def default_cloud_workers(n_jobs: int, on_cpu: bool) -> int:
    """``"auto"`` actors for ``n_jobs`` independent jobs beside the cloud process: one per job beyond the
    first on a CPU with 2+ cores (a job per process, the cores time-sliced when jobs outnumber them); none on
    a GPU or a single core."""
    return max(0, n_jobs - 1) if on_cpu and (os.cpu_count() or 1) >= 2 else 0


def actors_for(count, n_jobs: int, gpus: float, device_type: str, bf16: bool) -> int:
    """Actors of a group whose setting is ``count`` (an int or ``"auto"``) for ``n_jobs`` jobs, each asking
    for ``gpus`` of a GPU, when the cloud process runs on ``device_type`` ("cpu", "cuda") with bf16 autocast
    or not. With a GPU share the actors hold the work (``"auto"``: one per job); without one, only on a
    CPU cloud in fp32, where an actor computes what the cloud process would (a CUDA cloud process keeps
    its GPU work)."""
    if gpus > 0:
        return n_jobs if count == "auto" else count
    if device_type != "cpu" or bf16:
        return 0
    return default_cloud_workers(n_jobs, True) if count == "auto" else count


def workers_for(akd_cfg, cloud_cfg, n_tiers: int, device_type: str, bf16: bool) -> int:
    """The tiers' AKD actors (``strategy.akd.workers``, ``cloud.akd_gpus``); none without AKD steps."""
    if not akd_cfg.steps:
        return 0
    return actors_for(akd_cfg.workers, n_tiers, cloud_cfg.akd_gpus, device_type, bf16)


def teacher_actors(cloud_cfg, device_type: str, bf16: bool) -> int:
    """The teacher's replicas (``cloud.teacher_replicas``, ``cloud.teacher_gpus``)."""
    return actors_for(cloud_cfg.teacher_replicas, cloud_cfg.teacher_replicas, cloud_cfg.teacher_gpus,
                      device_type, bf16)


class _Slots:
    """The cloud's actors of this process, by what they ask for (options and precision): slot ``i`` serves
    every group's actor ``i``; the last group to close kills them."""

    def __init__(self):
        self.slots: dict[str, list] = {}
        self.nodes: dict[str, list[str]] = {}  # each slot's Ray node id
        self.users: dict[str, int] = {}
        self.lock = threading.RLock()


_SHARED = _Slots()
BACKGROUND = threading.local()  # ``active``: this thread's cloud work runs beside the loop (``fl_sim.cloud.lag``)


def run_here(job):
    """Run ``job`` in this process (its module's ``run``)."""
    return importlib.import_module(type(job).__module__).run(job)


class CloudWorker:
    """One actor's side: run the jobs it is handed (its models stay loaded between them) on its device."""

    def __init__(self, device: str, precision: str):
        from fl_sim.models import placement
        from fl_sim.quiet import quiet_libraries

        quiet_libraries()
        placement.use(device, precision)

    def run(self, job):
        return run_here(job)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


class ActorGroup:
    """Up to ``n`` ``CloudWorker`` actors of one ``kind`` ("teacher", "akd", "eval") in the running Ray
    instance, each created with Ray ``options`` (``CloudConfig.options``). ``local``: the calling process
    takes a share of the jobs. Actors asking for a GPU share run their models on it (``precision`` as the
    cloud process's); the others on the CPU."""

    def __init__(self, kind: str, n: int, options: dict | None = None, local: bool = True,
                 precision: str = "auto", start_timeout_s: float = 120.0):
        self.kind, self.n, self.local = kind, n, local
        self.options = {"num_cpus": 0, "num_gpus": 0} | (options or {})
        self.precision, self.start_timeout_s = precision, start_timeout_s
        self._actors: list = []
        self._joined = ""  # the key of the shared slots it is counted among the users of
        self.nodes: list[str] = []  # the Ray node each actor runs on

    def asks(self) -> str:
        o = self.options
        parts = [f"{o['num_cpus']:g} CPU", f"{o['num_gpus']:g} GPU"]
        parts += [f"{v:g} of resource {k!r}" for k, v in (o.get("resources") or {}).items()]
        return ", ".join(parts)

    def _key(self) -> str:
        """What the group's processes are shared by: its options and precision, in this Ray connection (a run
        that starts a new Ray instance in the same process never meets the last one's handles)."""
        import json

        import ray

        return json.dumps([self.options, self.precision, ray.get_runtime_context().get_job_id()], sort_keys=True)

    def start(self) -> list:
        """The group's actors, starting any that are missing or dead (none outside Ray). Groups that ask for
        the same resources share their processes, slot by slot (``_SHARED``): the teacher's replica, the AKD
        and the evaluation actors of a CPU cloud are the same few processes, which hold each model once."""
        import ray

        if not self.n or not ray.is_initialized():
            return []
        with _SHARED.lock:  # a lagging cloud's thread and the loop's may start groups at once
            return self._start(ray)

    def _start(self, ray) -> list:
        key = self._key()
        if self._joined != key:
            self._close(ray)  # joined in an earlier Ray connection: leave those slots
            _SHARED.users[key] = _SHARED.users.get(key, 0) + 1
            self._joined = key
        slots = _SHARED.slots.setdefault(key, [])
        nodes = _SHARED.nodes.setdefault(key, [])
        slots += [None] * (self.n - len(slots))
        nodes += [""] * (len(slots) - len(nodes))
        missing = [i for i in range(self.n) if slots[i] is None]
        if missing:
            self._check_cluster(ray.cluster_resources())
            device = "cuda" if self.options["num_gpus"] > 0 else "cpu"
            new = [ray.remote(max_restarts=0, **self.options)(CloudWorker).remote(device, self.precision)
                   for _ in missing]
            pings = [a.node_id.remote() for a in new]
            ready, _ = ray.wait(pings, num_returns=len(new), timeout=self.start_timeout_s)
            if len(ready) < len(new):
                for a in new:
                    ray.kill(a)
                raise FlSimError(f"cloud: the {self.kind} actors ({self.asks()} each) did not start within "
                                 f"{self.start_timeout_s:g} s: no node of the Ray cluster has that free (the fleet's "
                                 "workers hold every CPU of the nodes they run on); lower cloud.*_cpus or start a "
                                 "cloud node with --num-cpus 0 and the GPUs / resource it needs")
            for i, a, node in zip(missing, new, ray.get(pings)):
                slots[i], nodes[i] = a, node
        self._actors, self.nodes = list(slots[:self.n]), list(nodes[:self.n])
        return self._actors

    def _check_cluster(self, total: dict) -> None:
        """One line for what the whole cluster does not have."""
        o = self.options
        missing = [f"{o['num_gpus']:g} GPU"] if o["num_gpus"] > total.get("GPU", 0) else []
        missing += [f"resource {k!r}" for k in (o.get("resources") or {}) if total.get(k, 0) <= 0]
        if missing:
            custom = [k for k in sorted(total) if k.split(":")[0] not in _RAY_OWN]
            raise FlSimError(f"cloud: the {self.kind} actors ask for {' and '.join(missing)}, which the Ray cluster "
                             f"does not have (it has {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU"
                             f"{''.join(', ' + k for k in custom)})")

    def run(self, jobs: list) -> list:
        """Every job's result in the jobs' order."""
        actors = self.start() if self.n and jobs else []
        here = int(self.local or not actors)  # this process is executor 0
        where = [j % (len(actors) + here) - here for j in range(len(jobs))]  # an actor's index, or -1: here
        futures = {j: (a, actors[a].run.remote(job)) for j, (a, job) in enumerate(zip(where, jobs)) if a >= 0}
        results = {j: run_here(job) for j, job in enumerate(jobs) if j not in futures}
        for j, (a, future) in futures.items():
            results[j] = self._result(future, jobs[j], a)
        return [results[j] for j in range(len(jobs))]

    def _result(self, future, job, a: int):
        """``future``'s result; an actor that died is replaced and the job retried on the new one once; a job
        that fails there runs here (its error, if it has one, is then the cloud's own)."""
        import ray
        from ray.exceptions import RayActorError, RayError

        for attempt in (0, 1):
            try:
                return ray.get(future)
            except RayError as exc:
                why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                if isinstance(exc, RayActorError) and attempt == 0:
                    log.warning("cloud %s actor %d died (%s); its job is retried on a new actor", self.kind, a, why)
                    with _SHARED.lock:
                        slots = _SHARED.slots.get(self._joined, [])
                        if a < len(slots) and slots[a] is self._actors[a]:  # not replaced by a sharing group
                            ray.kill(slots[a])  # unreachable rather than dead: its resources go back
                            slots[a] = None
                    future = self.start()[a].run.remote(job)
                    continue
                if getattr(BACKGROUND, "active", False):  # beside the loop: this process's models are in use
                    raise FlSimError(f"cloud: a {self.kind} job failed on its actor ({why})") from None
                log.warning("cloud %s actor %d failed (%s); its job runs in the cloud process", self.kind, a, why)
                return run_here(job)

    def close(self) -> None:
        import ray

        with _SHARED.lock:
            self._close(ray)

    def _close(self, ray) -> None:
        if self._joined:
            key = self._joined
            _SHARED.users[key] -= 1
            if _SHARED.users[key] == 0:  # the last group using these processes
                for a in _SHARED.slots.pop(key, []):
                    if a is not None and ray.is_initialized():
                        try:
                            ray.kill(a)
                        except Exception:  # noqa: BLE001 - a handle of a Ray connection already gone
                            pass
                _SHARED.nodes.pop(key, None)
                del _SHARED.users[key]
            self._joined = ""
        self._actors, self.nodes = [], []

