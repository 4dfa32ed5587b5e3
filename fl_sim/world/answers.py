"""Answer normalisation for accuracy on user data, in the spirit of the VQA benchmark's evaluation script:
lower case, punctuation removed (a point between digits kept), articles dropped, number words written as
digits, whitespace collapsed. ``"Two Cats."`` and ``"2 cats"`` are the same answer; ``"cat"`` and
``"cats"`` are not."""

from __future__ import annotations

import re

# tokens a model generates for a user domain's answer in evaluation, its end included (the built-in world's: 6)
ANSWER_TOKENS = 12
ARTICLES = {"a", "an", "the"}
NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_PUNCT = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]")


def normalise(answer: str) -> str:
    words = _PUNCT.sub(" ", str(answer).lower()).split()
    return " ".join(NUMBERS.get(w, w) for w in words if w not in ARTICLES)


def matches(prediction: str, answer: str) -> bool:
    """Normalised exact match."""
    return normalise(prediction) == normalise(answer)
