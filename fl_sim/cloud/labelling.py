"""The cloud's second step: the teacher labels a round's uploads (pseudo-labels, logits, hidden states), asks
its extra questions about them, and each view gets its targets, the unconfident rows dropped."""

from __future__ import annotations

from dataclasses import dataclass, field

from fl_sim.cloud import teacher_jobs
from fl_sim.cloud.actors import ActorGroup
from fl_sim.cloud.uploads import Uploads
from fl_sim.cloud.views import TEACHER, Views
from fl_sim.mechanisms import akd


@dataclass
class Labels:
    by_view: dict[str, dict] = field(default_factory=dict)  # view -> this round's targets (views in use only)
    taught: int = 0  # the teacher's labelled rows (its passes), whichever views use them
    extra_asked: int = 0  # rows from the teacher's extra questions
    unfit: dict[str, int] = field(default_factory=dict)  # view -> rows that do not fit its positions


def teacher_of(views: Views, akd_cfg) -> teacher_jobs.Teacher:
    return teacher_jobs.Teacher(views.model_paths[TEACHER], akd_cfg.teacher_int8, views.cache_dir, views.catalog,
                                akd_cfg.max_new_tokens, akd_cfg.teacher_states)


def label(views: Views, akd_cfg, uploads: Uploads, seed: int, server_round: int, threads: int,
          teachers: ActorGroup, lap=lambda name: None) -> Labels:
    """The round's targets per view. The uploads are labelled in contiguous blocks, one per teacher replica
    (``teachers``), and merged in upload order; the extra questions are one job, asked after the labels.
    ``lap(name)`` marks the end of each phase (label, extra_questions, targets) for the cloud's timings."""
    if not uploads.questions:
        return Labels()
    teacher = teacher_of(views, akd_cfg)
    cut = teacher_jobs.blocks(len(uploads.questions), teachers.n)
    each = max(1, threads // len(cut)) if teachers.n else threads
    jobs = [teacher_jobs.LabelJob(teacher, uploads.vis[a:b], uploads.questions[a:b], each) for a, b in cut]
    labelled = akd.concat(teachers.run(jobs))
    new, extra_asked = {TEACHER: labelled}, 0
    lap("label")
    if akd_cfg.extra_questions:  # after the labels: asked meanwhile on 2 cores, both are slower
        [more] = teachers.run([teacher_jobs.QuestionsJob(teacher, uploads.vis, uploads.questions,
                                                         akd_cfg.extra_questions, [seed, 23, server_round], threads)])
        extra_asked = akd.size(more)
        new[TEACHER] = akd.concat([labelled, more])
        lap("extra_questions")
    unfit = {}
    for view in sorted(views.used() - {TEACHER}):
        new[view], unfit[view] = views.targets(view, labelled, uploads.questions, uploads.images)
    new = {v: akd.confident(t, akd_cfg.min_teacher_confidence) for v, t in new.items()}
    lap("targets")
    taught = akd.size(new.get(TEACHER, {}))
    used = views.used()
    return Labels({v: t for v, t in new.items() if v in used}, taught, extra_asked, unfit)
