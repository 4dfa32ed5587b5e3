"""The supervised reference (fl_sim/models/reference.py): it learns what the image and question decide, and
``fl-sim evaluate`` compares the teacher with it."""

import numpy as np
from datasets import Dataset

from fl_sim.app.zoo_evaluation import check_reference
from fl_sim.models.reference import reference_accuracy

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def _split(n: int, seed: int) -> Dataset:
    """One colour fills the top half, another the bottom; the question asks for one half's colour."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    images, questions, answers = [], [], []
    for _ in range(n):
        top, bottom = rng.choice(len(names), 2, replace=False)
        im = np.zeros((48, 48, 3), np.uint8)
        im[:24], im[24:] = COLOURS[names[top]], COLOURS[names[bottom]]
        images.append(im + rng.integers(0, 20, im.shape, dtype=np.uint8))
        half = "top" if rng.random() < 0.5 else "bottom"
        questions.append(f"What colour is the {half} half?")
        answers.append(f"The {names[top if half == 'top' else bottom]}.")
    return Dataset.from_dict({"image": images, "question": questions, "answer": answers,
                              "family": ["vqa"] * n}).with_format("numpy")


def test_the_reference_learns_what_image_and_question_decide():
    acc = reference_accuracy(_split(600, 0), _split(100, 1))
    # the answer needs both: the image alone or the question alone gets at most half of them
    assert acc["vqa"] >= 0.9 and acc["vqa_exact"] >= 0.9, acc


def test_the_teacher_is_held_to_the_reference():
    table = {"teacher": {"mine": {"vqa": 0.7}, "yours": {"vqa": 0.95}}}
    lines = check_reference(table, {"mine": {"vqa": 0.8}, "yours": {"vqa": 0.9}})
    assert lines[0].startswith("[MISSED] teacher >= the supervised reference on mine (teacher 70.0%, reference 80.0%")
    assert lines[1].startswith("[MET] teacher >= the supervised reference on yours")
