"""The teacher's work on a round's uploads as jobs, for its replicas (``fl_sim.cloud.actors``) or the cloud
process: labels (``LabelJob``: pseudo-labels, logits, hidden states of a block of uploads) and the extra
questions (``QuestionsJob``, ``strategy.akd.extra_questions``): the teacher captions each upload and answers
up to ``k`` more questions generated from its caption (``akd.question_targets``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fl_sim.device import model_cache
from fl_sim.mechanisms import akd
from fl_sim.models.mllm import answer_with_stats
from fl_sim.world.domains import CAPTION_QUESTION


@dataclass
class Teacher:
    """Which teacher, and how it answers."""
    path: str
    int8: bool  # strategy.akd.teacher_int8
    cache_dir: str | None
    catalog: object  # the run's ``DomainCatalog`` (its prompter's user words)
    max_new_tokens: int
    states: str = "generation"  # strategy.akd.teacher_states

    def load(self):
        """``(model, prompter)`` of this process."""
        return (model_cache.labelling_model(self.path, self.int8),
                model_cache.prompter_for(self.path, self.cache_dir, self.catalog))


@dataclass
class LabelJob:
    teacher: Teacher
    vis: torch.Tensor  # (n, tokens, width): a block of uploads as the teacher's visual tokens
    questions: list[str]
    threads: int = 1


@dataclass
class QuestionsJob:
    teacher: Teacher
    vis: torch.Tensor  # (n, tokens, width): the uploads as the teacher's visual tokens
    questions: list[str]  # the question each upload came with (not asked again)
    k: int
    entropy: list[int]  # the question generator's seed (np.random.SeedSequence entropy)
    threads: int = 1


def run(job: LabelJob | QuestionsJob) -> dict[str, torch.Tensor]:
    """The teacher's targets for the job's rows (``akd.teacher_targets``), or for its extra questions
    (``{}`` when no caption parses), computed with ``job.threads`` torch threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        model, pr = job.teacher.load()
        t = job.teacher
        if isinstance(job, LabelJob):
            return akd.teacher_targets(model, pr, job.vis, job.questions, t.max_new_tokens, states=t.states)
        captions, _ = answer_with_stats(model, pr, job.vis, [CAPTION_QUESTION] * len(job.questions),
                                        t.max_new_tokens)
        rng = np.random.default_rng(np.random.SeedSequence(job.entropy))
        return akd.question_targets(model, pr, job.vis, captions, job.k, rng, job.questions, t.max_new_tokens,
                                    t.states)
    finally:
        torch.set_num_threads(threads)


def blocks(n: int, parts: int) -> list[tuple[int, int]]:
    """``n`` rows cut into at most ``parts`` contiguous, non-empty blocks ``(start, stop)``, sizes differing by
    at most one."""
    parts = max(1, min(parts, n))
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
