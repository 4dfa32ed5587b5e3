"""The teacher's extra questions about a round's uploads as data (``strategy.akd.extra_questions``): the
teacher captions each upload and answers up to ``k`` more questions generated from its caption
(``akd.question_targets``). They need only the uploads' visual tokens and questions, not their labels, so
they could be asked on an actor (``fl_sim.cloud.actors``) while the cloud labels; on 2 cores that is slower
than asking them after the labels in the cloud process, with both threads (docs/notes.md), so the cloud
does that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

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
