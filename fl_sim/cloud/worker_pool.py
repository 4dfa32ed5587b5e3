"""Worker processes that do the cloud's independent work side by side with it: the tiers' AKD
(``fl_sim.cloud.tier_job``; the teacher's extra questions, ``fl_sim.cloud.question_job``, can run there too).

CD-CCA's cloud trains every tier's adapters each round, and the tiers are independent. At these model
sizes torch's kernels gain little from a second thread (docs/notes.md: 1.16x on AKD,
1.40x on labelling) and nearly 2x from a second process, so a pool keeps single-threaded Python
processes, started once per cloud process (each loads a model once and keeps it). ``submit(job)`` hands
a job to the next worker and ``collect`` waits for its result; ``run(jobs)`` gives job ``i`` to executor
``i % (workers + 1)``, executor 0 being the calling process. A job and its result cross as safetensors
files with a JSON header in a scratch folder on tmpfs, named in JSON lines over the worker's stdin and
stdout: no pickle. A job runs with the threads it names (``threads``), so it gives the same result in a
worker as in the calling process (``tests/test_cloud_pool.py``). A worker that fails is dropped with a
warning and its job runs in the calling process.

Run as ``python -m fl_sim.cloud.worker_pool``: one worker's loop.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Ticket:
    job: object
    worker: int | None  # None: to run in this process when collected
    result: str  # the result file the worker writes


def _kinds() -> dict:
    """Job class name -> the module that saves, loads and runs jobs of that kind."""
    from fl_sim.cloud import question_job, tier_job

    return {"TierJob": tier_job, "QuestionsJob": question_job}


def _kind(job):
    return _kinds()[type(job).__name__]


def default_cloud_workers(n_jobs: int, on_cpu: bool) -> int:
    """``strategy.akd.workers = "auto"``: one worker per job beyond the first on a CPU with 2+ cores (a job
    per process, the cores time-sliced when jobs outnumber them); none on a GPU or a single core."""
    return max(0, n_jobs - 1) if on_cpu and (os.cpu_count() or 1) >= 2 else 0


def workers_for(akd_cfg, n_tiers: int, fp32_cpu: bool) -> int:
    """The cloud's workers for ``strategy.akd`` (``workers``): on a CPU cloud in fp32 only, where a worker
    computes what the cloud process would; none without AKD steps."""
    if not fp32_cpu or not akd_cfg.steps:
        return 0
    return default_cloud_workers(n_tiers, True) if akd_cfg.workers == "auto" else akd_cfg.workers


class CloudPool:
    def __init__(self):
        self._procs: list[subprocess.Popen] = []
        self._ready: list[bool] = []
        self._scratch: str | None = None
        self._count = 0
        self._turn = 0
        self._stash: dict[str, dict] = {}  # replies read while waiting for another job's

    def __len__(self) -> int:
        return len(self._procs)

    def grow(self, n: int) -> None:
        """Start workers until there are ``n`` (they import torch and load models in the background)."""
        while len(self._procs) < n:
            env = os.environ | {"CUDA_VISIBLE_DEVICES": "",
                                "TRANSFORMERS_VERBOSITY": "error",
                                "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                               os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
            self._procs.append(subprocess.Popen([sys.executable, "-m", "fl_sim.cloud.worker_pool"],
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
                                                bufsize=1))
            self._ready.append(False)

    def _path(self, kind: str) -> str:
        if self._scratch is None:
            shm = "/dev/shm"
            base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
            self._scratch = tempfile.mkdtemp(prefix="fl-sim-cloud-", dir=base)
        self._count += 1
        return os.path.join(self._scratch, f"{kind}-{os.getpid()}-{self._count}.safetensors")

    def _reply(self, i: int) -> dict:
        line = self._procs[i].stdout.readline()
        if not line:
            raise RuntimeError(f"exited with code {self._procs[i].wait()}")
        return json.loads(line)

    def _drop(self, i: int, why: str) -> None:
        log.warning("cloud worker %d failed (%s); its jobs run in the cloud process from now on", i, why)
        proc = self._procs[i]
        self._procs[i] = None
        if proc.poll() is None:
            proc.kill()

    def submit(self, job) -> Ticket:
        """Start ``job`` (a ``TierJob`` or ``QuestionsJob``) on the next worker in turn; ``collect`` its
        result. With no worker left, the job waits to run in this process when collected."""
        alive = [i for i, p in enumerate(self._procs) if p is not None]
        if not alive:
            return Ticket(job, None, "")
        w = alive[self._turn % len(alive)]
        self._turn += 1
        kind = _kind(job)
        try:
            if not self._ready[w]:
                if not self._reply(w).get("ready"):
                    raise RuntimeError("no ready line")
                self._ready[w] = True
            path, result = self._path("job"), self._path("result")
            kind.save(job, path)
            self._procs[w].stdin.write(json.dumps({"kind": type(job).__name__, "job": path, "result": result}) + "\n")
            self._procs[w].stdin.flush()
            return Ticket(job, w, result)
        except (OSError, RuntimeError, ValueError) as exc:
            self._drop(w, str(exc))
            return Ticket(job, None, "")

    def collect(self, ticket: Ticket):
        """The result of a submitted job: from its worker, or run here if it had none or it failed."""
        kind = _kind(ticket.job)
        if ticket.worker is not None and self._procs[ticket.worker] is not None:
            try:
                msg = self._stash.pop(ticket.result, None)
                while msg is None:  # a worker answers its jobs in the order they were sent
                    reply = self._reply(ticket.worker)
                    if reply.get("result") == ticket.result:
                        msg = reply
                    else:
                        self._stash[reply.get("result", "")] = reply
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                result = kind.load_result(ticket.result)
                os.unlink(ticket.result)
                return result
            except (OSError, RuntimeError, ValueError) as exc:
                self._drop(ticket.worker, str(exc))
        return kind.run(ticket.job)

    def run(self, jobs: list) -> list:
        """Every job's result in the jobs' order: job ``i`` on executor ``i % (workers + 1)``, executor 0
        being this process."""
        alive = sum(p is not None for p in self._procs)
        tickets = {j: self.submit(job) for j, job in enumerate(jobs) if j % (alive + 1)}
        results = {j: _kind(job).run(job) for j, job in enumerate(jobs) if j not in tickets}
        results |= {j: self.collect(t) for j, t in tickets.items()}
        return [results[j] for j in range(len(jobs))]

    def close(self) -> None:
        for p in self._procs:
            if p is not None and p.poll() is None:
                p.stdin.close()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        self._procs, self._ready = [], []
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


_SHARED = CloudPool()
atexit.register(_SHARED.close)


def shared(n: int) -> CloudPool:
    """This process's pool, with at least ``n`` workers."""
    _SHARED.grow(n)
    return _SHARED


def main() -> None:
    reply = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's channel; whatever prints goes to stderr
    os.dup2(2, 1)
    from transformers.utils import logging as hf_logging

    kinds = _kinds()
    hf_logging.disable_progress_bar()
    reply.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            kind = kinds[msg["kind"]]
            job = kind.load(msg["job"])
            os.unlink(msg["job"])
            kind.save_result(kind.run(job), msg["result"])
            reply.write(json.dumps({"result": msg["result"]}) + "\n")
        except Exception as exc:  # noqa: BLE001 - report any failure of a job to the cloud, which reruns it
            reply.write(json.dumps({"result": msg.get("result", ""), "error": f"{type(exc).__name__}: {exc}"}) + "\n")


if __name__ == "__main__":
    main()
