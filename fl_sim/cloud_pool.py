"""Worker processes that train tiers' AKD side by side with the cloud (``fl_sim.tier_job``).

CD-CCA's cloud trains every tier's adapters each round, and the tiers are independent. At these model
sizes torch's kernels gain little from a second thread (``benchmarks/cloud_threads.py``: 1.16x on AKD) and
nearly 2x from a second process, so a pool keeps ``n`` single-threaded Python processes, started once per
cloud process (each loads a tier's model once and keeps it). ``run(jobs)`` gives job ``i`` to executor
``i % (n + 1)``, executor 0 being the calling process (single-threaded meanwhile), and returns the results
in order. A job and its result cross as safetensors files (``tier_job.save``) in a scratch folder on
tmpfs, named in JSON lines over the worker's stdin and stdout: no pickle. AKD's result does not depend on
the number of threads (``tests/test_cloud_pool.py``), so a job trains the same adapters in a worker as in
the cloud process. A worker that fails is dropped with a warning and its job runs in the calling process.

Run as ``python -m fl_sim.cloud_pool``: one worker's loop.
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
from pathlib import Path

log = logging.getLogger(__name__)


def default_workers(n_jobs: int, on_cpu: bool) -> int:
    """``strategy.akd.workers = "auto"``: one worker per job beyond the first on a CPU with 2+ cores (a job
    per process, the cores time-sliced when jobs outnumber them); none on a GPU or a single core."""
    return max(0, n_jobs - 1) if on_cpu and (os.cpu_count() or 1) >= 2 else 0


class CloudPool:
    def __init__(self):
        self._procs: list[subprocess.Popen] = []
        self._ready: list[bool] = []
        self._scratch: str | None = None
        self._count = 0

    def __len__(self) -> int:
        return len(self._procs)

    def grow(self, n: int) -> None:
        """Start workers until there are ``n`` (they import torch and load models in the background)."""
        while len(self._procs) < n:
            env = os.environ | {"CUDA_VISIBLE_DEVICES": "",
                                "TRANSFORMERS_VERBOSITY": "error",
                                "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                               os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
            self._procs.append(subprocess.Popen([sys.executable, "-m", "fl_sim.cloud_pool"], stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, env=env, text=True, bufsize=1))
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

    def run(self, jobs: list) -> list:
        """``tier_job.run`` of every job (``TierJob``), as ``TierResult``s in the jobs' order."""
        from . import tier_job

        alive = [i for i, p in enumerate(self._procs) if p is not None]
        sent: dict[int, tuple[int, str]] = {}  # job index -> (worker, result path)
        mine = []
        for j, job in enumerate(jobs):
            slot = j % (len(alive) + 1)
            if slot == 0:
                mine.append(j)
                continue
            w = alive[slot - 1]
            try:
                if not self._ready[w]:
                    if not self._reply(w).get("ready"):
                        raise RuntimeError("no ready line")
                    self._ready[w] = True
                path = self._path("job")
                tier_job.save(job, path)
                self._procs[w].stdin.write(json.dumps({"job": path, "result": self._path("result")}) + "\n")
                self._procs[w].stdin.flush()
                sent[j] = w
            except (OSError, RuntimeError, ValueError) as exc:
                self._drop(w, str(exc))
                alive.remove(w)
                mine.append(j)
        results = {j: tier_job.run(jobs[j]) for j in mine}
        for j, w in sent.items():
            try:
                msg = self._reply(w)
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                results[j] = tier_job.load_result(msg["result"])
                os.unlink(msg["result"])
            except (OSError, RuntimeError, ValueError) as exc:
                self._drop(w, str(exc))
                results[j] = tier_job.run(jobs[j])
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

    from . import tier_job

    hf_logging.disable_progress_bar()
    reply.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            job = tier_job.load(msg["job"])
            os.unlink(msg["job"])
            tier_job.save_result(tier_job.run(job), msg["result"])
            reply.write(json.dumps({"result": msg["result"]}) + "\n")
        except Exception as exc:  # noqa: BLE001 - report any failure of a job to the cloud, which reruns it
            reply.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")


if __name__ == "__main__":
    main()
