import numpy as np
import torch

from fl_sim.models.answer_head import MAX_ANSWERS, AnswerHead, answer_classes
from fl_sim.models.mllm import Prompter, build_frontend
from fl_sim.models.presets import get_zoo


def test_classes_are_the_repeated_normalised_answers_most_frequent_first():
    answers = ["Two cats.", "2 cats", "the dog", "Dog", "dog.", "bird", "", "The."]
    assert answer_classes(answers) == ["dog", "2 cats"]  # "bird" once, "" and "The." normalise to nothing
    assert answer_classes(["a caption seen once", "another one"]) == []
    many = [f"w{i}" for i in range(MAX_ANSWERS + 5) for _ in range(2)]
    assert len(answer_classes(many)) == MAX_ANSWERS


def test_the_head_learns_answers_from_the_towers_tokens(cache_dir):
    """Answers that depend on the image only through its colour: tower + head fit them in a few dozen steps,
    and an answer outside the classes is left out of training and counted as missed."""
    from fl_sim.world.tokenizer import load_tokenizer

    prompter = Prompter(load_tokenizer(cache_dir))
    tower = build_frontend(get_zoo("tiny").frontend, 16)
    rng = np.random.default_rng(0)

    def sample(colour):
        img = np.zeros((48, 48, 3), np.uint8)
        img[..., 0 if colour == "red" else 2] = 200 + rng.integers(0, 50)
        return {"image": img, "question": "what colour is the square ?", "answer": colour.upper() + "."}

    torch.manual_seed(0)
    classes = answer_classes(["red", "blue"] * 2)
    head = AnswerHead(tower.config.hidden_size, prompter.n_visual, len(prompter.tok), classes)
    data = [sample(c) for c in ["red", "blue"] * 16]
    assert head.known(data + [{"answer": "green"}]) == data
    opt = torch.optim.AdamW(list(head.parameters()) + list(tower.parameters()), lr=3e-3)
    for _ in range(40):
        loss = head.loss(tower, prompter, data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert head.accuracy(tower, prompter, data) == 1.0
    green = dict(sample("red"), answer="green")
    assert head.accuracy(tower, prompter, [green]) == 0.0


def test_stage_a_plus_moves_each_user_image_by_at_most_its_shift_with_edges_repeated():
    from fl_sim.models.train import shifted

    img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    sample = {"image": img, "answer": "a"}
    assert shifted(sample, 0, np.random.default_rng(0)) is sample
    rng = np.random.default_rng(0)
    moved = [shifted(sample, 2, rng) for _ in range(50)]
    seen = set()
    for s in moved:
        assert s["image"].shape == img.shape and s["answer"] == "a"
        # the centre pixel of the moved image is the original's, up to 2 rows and columns away
        (y, x), = [(y, x) for y in range(8) for x in range(8) if (img[y, x] == s["image"][4, 4]).all()]
        assert abs(y - 4) <= 2 and abs(x - 4) <= 2
        seen.add((y, x))
    assert len(seen) > 10  # fresh moves, not one
    assert (sample["image"] == img).all() and sample["image"] is img  # the stored image is left as it was
