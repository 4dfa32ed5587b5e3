"""``[cloud]``: where the cloud's Ray actors run (``fl_sim.cloud.actors``) and what each reserves.

The cloud has three kinds of actor: the teacher's replicas (labels, captions, extra questions), the tiers'
AKD actors (training, one tier a job) and the evaluator's (tiers and teacher on the test sets, one tier a
job). Each kind asks Ray for its own CPUs and GPU share, and every cloud actor asks for ``resource`` when it
is set, so that a cluster can keep the cloud on chosen nodes while the devices go anywhere.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from fl_sim.config.section import Section

Count = Annotated[int, Field(ge=0)] | Literal["auto"]


class CloudConfig(Section):
    teacher_replicas: int = Field(1, ge=0, le=64, description=(
        "Ray actors holding the teacher: a round's uploads are cut into this many contiguous blocks, labelled "
        "side by side and merged in upload order; 0 = the teacher in the cloud process. On a CUDA cloud "
        "process without teacher_gpus the teacher stays there"))
    eval_actors: Count = Field("auto", description=(
        'Ray actors evaluating the tiers side by side with the cloud process, one tier a job; "auto" = one '
        "per tier beyond the first on a CPU with 2+ cores (as strategy.akd.workers), one per tier with "
        "eval_gpus; 0 = every tier in the cloud process"))
    teacher_cpus: float = Field(0.0, ge=0, description="CPUs each teacher actor reserves in Ray")
    teacher_gpus: float = Field(0.0, ge=0, description=(
        "GPU share of each teacher actor (0.5 = two per GPU); > 0 runs the teacher on that GPU"))
    akd_cpus: float = Field(0.0, ge=0, description="CPUs each AKD actor reserves in Ray")
    akd_gpus: float = Field(0.0, ge=0, description="GPU share of each AKD actor; > 0 trains the tiers on GPUs")
    eval_cpus: float = Field(0.0, ge=0, description="CPUs each evaluation actor reserves in Ray")
    eval_gpus: float = Field(0.0, ge=0, description="GPU share of each evaluation actor")
    resource: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$", description=(
        "a Ray custom resource every cloud actor asks for (0.001 of it): the cloud runs only on nodes "
        "started with --resources '{\"NAME\": 1}'. A local run gives its one node the resource"))
    start_timeout_s: float = Field(120.0, gt=0, description=(
        "how long a cloud actor may wait for its resources before the run stops with an error naming them"))

    def options(self, kind: str) -> dict:
        """Ray actor options of ``kind`` ("teacher", "akd", "eval")."""
        out = {"num_cpus": getattr(self, f"{kind}_cpus"), "num_gpus": getattr(self, f"{kind}_gpus")}
        if self.resource:
            out["resources"] = {self.resource: 0.001}
        return out

    def gpus(self) -> float:
        """The largest GPU share any cloud actor asks for."""
        return max(self.teacher_gpus, self.akd_gpus, self.eval_gpus)
