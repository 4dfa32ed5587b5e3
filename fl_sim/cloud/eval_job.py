"""One model's accuracy on the run's test sets as a job, for the evaluator's actors (``fl_sim.cloud.actors``)
or the cloud process: a tier's model with an adapter state, or a base model (the teacher's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl_sim.device import model_cache
from fl_sim.models.evaluate import evaluate


@dataclass
class TestSets:
    """``n_test`` samples of each of ``domains``' test split, drawn with ``seed``."""
    domains: list[str]
    n_test: int
    seed: int
    cache_dir: str | None
    catalog: object  # the run's ``DomainCatalog``

    def load(self) -> dict:
        return {d: model_cache.split(d, "test", self.n_test, self.seed, self.cache_dir, self.catalog)
                for d in self.domains}


@dataclass
class EvalJob:
    model_path: str
    sets: TestSets
    adapters: tuple | None = None  # model_cache.adapted_model's arguments; None: the base model as it is
    state: dict[str, torch.Tensor] | None = None  # the adapter state (None: the initial adapters)
    threads: int = 1


def run(job: EvalJob) -> dict[str, float]:
    """Domain -> VQA accuracy of the job's model, computed with ``job.threads`` torch threads."""
    from fl_sim.models.adapters import load_adapter_state

    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        if job.adapters is None:
            model = model_cache.base_model(job.model_path)
        else:
            model, init = model_cache.adapted_model(job.model_path, *job.adapters)
            load_adapter_state(model, job.state if job.state is not None else init)
        pr = model_cache.prompter_for(job.model_path, job.sets.cache_dir, job.sets.catalog)
        return {d: r.get("vqa", float("nan")) for d, r in evaluate(model, pr, job.sets.load()).items()}
    finally:
        torch.set_num_threads(threads)
