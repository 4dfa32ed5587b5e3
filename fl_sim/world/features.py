"""The columns of every domain's split, built-in or the user's: what ``datasets`` stores."""

from __future__ import annotations


def split_features(cell_px: int):
    """The ``datasets.Features`` of a split whose images are ``3 * cell_px`` pixels square (RGB, uint8)."""
    from datasets import Array3D, Features, Value

    side = 3 * cell_px
    return Features({
        "image": Array3D(shape=(side, side, 3), dtype="uint8"),
        "question": Value("string"), "answer": Value("string"), "family": Value("string"),
        "domain": Value("string"), "caption": Value("string"),
    })
