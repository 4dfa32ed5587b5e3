"""The cloud's second step: the teacher labels a round's uploads (pseudo-labels, logits, hidden states), asks
its extra questions about them, and each view gets its targets, the unconfident rows dropped."""

from __future__ import annotations

from dataclasses import dataclass, field

from fl_sim.cloud import question_job
from fl_sim.cloud.uploads import Uploads
from fl_sim.cloud.views import TEACHER, Views
from fl_sim.device import model_cache
from fl_sim.mechanisms import akd


@dataclass
class Labels:
    by_view: dict[str, dict] = field(default_factory=dict)  # view -> this round's targets (views in use only)
    taught: int = 0  # the teacher's labelled rows (its passes), whichever views use them
    extra_asked: int = 0  # rows from the teacher's extra questions


def questions_job(views: Views, akd_cfg, uploads: Uploads, seed: int, server_round: int,
                  threads: int) -> question_job.QuestionsJob:
    """``akd.extra_questions``: the teacher captions each upload and answers more questions about it,
    generated from its own caption (``akd.question_targets``)."""
    return question_job.QuestionsJob(
        views.model_paths[TEACHER], akd_cfg.teacher_int8, views.cache_dir, uploads.vis, uploads.questions,
        akd_cfg.extra_questions, [seed, 23, server_round], akd_cfg.max_new_tokens, threads,
        {n: d.model_dump(mode="json") for n, d in views.catalog.specs.items()}, akd_cfg.teacher_states)


def label(views: Views, akd_cfg, uploads: Uploads, seed: int, server_round: int, threads: int,
          lap=lambda name: None) -> Labels:
    """The round's targets per view; ``lap(name)`` marks the end of each phase (label, extra_questions,
    targets) for the cloud's timings."""
    if not uploads.questions:
        return Labels()
    pr = views.prompter(TEACHER)
    teacher = model_cache.labelling_model(views.model_paths[TEACHER], akd_cfg.teacher_int8)
    labelled = akd.teacher_targets(teacher, pr, uploads.vis, uploads.questions, akd_cfg.max_new_tokens,
                                   states=akd_cfg.teacher_states)
    new, extra_asked = {TEACHER: labelled}, 0
    lap("label")
    if akd_cfg.extra_questions:  # in this process, after the labels: a worker asking them meanwhile is slower
        more = question_job.run(questions_job(views, akd_cfg, uploads, seed, server_round, threads))
        extra_asked = akd.size(more)
        new[TEACHER] = akd.concat([labelled, more])
        lap("extra_questions")
    for view in sorted(views.used() - {TEACHER}):
        new[view] = views.targets(view, labelled, uploads.questions, uploads.images)
    new = {v: akd.confident(t, akd_cfg.min_teacher_confidence) for v, t in new.items()}
    lap("targets")
    taught = akd.size(new.get(TEACHER, {}))
    used = views.used()
    return Labels({v: t for v, t in new.items() if v in used}, taught, extra_asked)
