"""The supervised reference (fl_sim/models/reference.py): it learns what the image and question decide, and
``fl-sim evaluate`` compares the teacher with it."""

import numpy as np
from datasets import Dataset

from fl_sim.app.zoo_evaluation import check_reference, print_eval
from fl_sim.models.reference import reference_accuracy

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def _split(n: int, seed: int) -> Dataset:
    """One colour fills the top half, another the bottom; the question asks for one half's colour (the
    question type: which half)."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    images, questions, answers, halves = [], [], [], []
    for _ in range(n):
        top, bottom = rng.choice(len(names), 2, replace=False)
        im = np.zeros((48, 48, 3), np.uint8)
        im[:24], im[24:] = COLOURS[names[top]], COLOURS[names[bottom]]
        images.append(im + rng.integers(0, 20, im.shape, dtype=np.uint8))
        half = "top" if rng.random() < 0.5 else "bottom"
        questions.append(f"What colour is the {half} half?")
        answers.append(f"The {names[top if half == 'top' else bottom]}.")
        halves.append(half)
    return Dataset.from_dict({"image": images, "question": questions, "answer": answers,
                              "family": halves}).with_format("numpy")


def test_the_reference_learns_what_image_and_question_decide():
    acc = reference_accuracy(_split(600, 0), _split(100, 1))
    # the answer needs both: the image alone or the question alone gets at most half of them
    assert acc["vqa"] >= 0.9 and acc["vqa_exact"] >= 0.9, acc
    assert set(acc) == {"vqa", "vqa_exact", "top", "bottom"} and min(acc["top"], acc["bottom"]) >= 0.8, acc


def test_the_teacher_is_held_to_the_reference():
    table = {"teacher": {"mine": {"vqa": 0.7}, "yours": {"vqa": 0.95}}}
    lines = check_reference(table, {"mine": {"vqa": 0.8}, "yours": {"vqa": 0.9}})
    assert lines[0].startswith("[MISSED] teacher >= the supervised reference on mine (teacher 70.0%, reference 80.0%")
    assert lines[1].startswith("[MET] teacher >= the supervised reference on yours")


def test_evaluate_prints_a_user_domains_question_types_beside_the_reference(capsys):
    """A user domain's types get their own table (the built-in family columns stay empty for it, even where
    a type shares a family's name), the reference's row included."""
    table = {"teacher": {"source": {"count": 0.9, "vqa": 0.9},
                         "mine": {"count": 0.25, "where": 0.75, "vqa": 0.5, "vqa_exact": 0.4}},
             "reference": {"mine": {"count": 0.5, "where": 1.0, "vqa": 0.75, "vqa_exact": 0.75}}}
    print_eval(table)
    out = capsys.readouterr().out
    main, types = out.split("mine: VQA % by question type")
    row = next(line for line in main.splitlines() if "teacher" in line and "mine" in line)
    assert "25.0" not in row and "50.0" in row and "40.0" in row
    lines = {line.split()[1]: line for line in types.splitlines() if line[:1] in "│┃" and line.strip()}
    assert [c.strip() for c in lines["model"].strip("┃ ").split("┃")] == ["model", "count", "where", "all"]
    assert "25.0" in lines["teacher"] and "75.0" in lines["teacher"] and "100.0" in lines["reference"]
