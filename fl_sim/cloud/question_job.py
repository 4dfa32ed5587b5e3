"""The teacher's extra questions about a round's uploads as data (``strategy.akd.extra_questions``): the
teacher captions each upload and answers up to ``k`` more questions generated from its caption
(``akd.question_targets``). They need only the uploads' visual tokens and questions, not their labels, so
they could be asked in a worker (``fl_sim.cloud.worker_pool``) while the cloud labels; on 2 cores that is slower
than asking them after the labels in the cloud process, with both threads (docs/notes.md),
so the cloud does that. On disk (``save`` / ``load``) a job or its result is one safetensors file with a
JSON header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fl_sim.device import model_cache
from fl_sim.mechanisms import akd
from fl_sim.models.mllm import answer_with_stats
from fl_sim.world.domains import CAPTION_QUESTION


@dataclass
class QuestionsJob:
    teacher_path: str
    int8: bool  # strategy.akd.teacher_int8
    cache_dir: str | None
    vis: torch.Tensor  # (n, tokens, width): the uploads as the teacher's visual tokens
    questions: list[str]  # the question each upload came with (not asked again)
    k: int
    entropy: list[int]  # the question generator's seed (np.random.SeedSequence entropy)
    max_new_tokens: int
    threads: int = 1
    domains: dict = field(default_factory=dict)  # the cloud's user domains (name -> UserDomainConfig as JSON)
    states: str = "generation"  # strategy.akd.teacher_states


def run(job: QuestionsJob) -> dict[str, torch.Tensor]:
    """The teacher's targets for the extra questions (``{}`` when no caption parses)."""
    from fl_sim.config import UserDomainConfig
    from fl_sim.world.catalog import DomainCatalog

    catalog = DomainCatalog({n: UserDomainConfig.model_validate(d) for n, d in job.domains.items()}, job.cache_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        teacher = model_cache.labelling_model(job.teacher_path, job.int8)
        pr = model_cache.prompter_for(job.teacher_path, job.cache_dir, catalog)
        captions, _ = answer_with_stats(teacher, pr, job.vis, [CAPTION_QUESTION] * len(job.questions),
                                        job.max_new_tokens)
        rng = np.random.default_rng(np.random.SeedSequence(job.entropy))
        return akd.question_targets(teacher, pr, job.vis, captions, job.k, rng, job.questions, job.max_new_tokens,
                                    job.states)
    finally:
        torch.set_num_threads(threads)


def save(job: QuestionsJob, path: str) -> None:
    header = {k: v for k, v in job.__dict__.items() if k != "vis"}
    save_file({"vis": job.vis.contiguous()}, path, metadata={"header": json.dumps(header)})


def load(path: str) -> QuestionsJob:
    with safe_open(path, "pt") as f:
        return QuestionsJob(vis=f.get_tensor("vis"), **json.loads(f.metadata()["header"]))


def save_result(targets: dict[str, torch.Tensor], path: str) -> None:
    save_file({k: v.contiguous() for k, v in targets.items()}, path)


def load_result(path: str) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}
