"""Synthetic scenes on a 3x3 grid, rendered with numpy.

A scene is a list of objects, each in its own grid cell. With the vision patch size equal to the cell
size, every cell is exactly one visual token, which keeps the task learnable by small models on a CPU.
Objects are geometric shapes or real handwritten digits (scikit-learn's bundled ``load_digits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

GRID = 3
CELL_PX = 16  # pixels per grid cell of the fleet's images
IMAGE_SHAPE = (GRID * CELL_PX, GRID * CELL_PX, 3)  # every domain's images, built-in or the user's
POSITIONS = [
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
]
SIZES = ["small", "large"]
GEOMETRIC_SHAPES = ["circle", "square", "triangle", "cross", "diamond", "ring"]
DIGIT_SHAPES = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
COLOURS = {
    # source palette
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 225), "yellow": (235, 215, 40),
    # dusk palette (appearance-shift domain)
    "orange": (245, 135, 20), "purple": (140, 45, 195), "cyan": (30, 205, 215), "pink": (245, 120, 185),
}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major
    digit_index: int = -1  # index into load_digits for digit shapes

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def digit_pool(split: str, train_share: float = 0.7) -> dict[int, np.ndarray]:
    """Indices of ``load_digits`` images per digit class; train and test use disjoint writers' samples."""
    _, target = _digits()
    n_train = int(len(target) * train_share)
    idx = np.arange(len(target))
    idx = idx[:n_train] if split == "train" else idx[n_train:]
    return {c: idx[target[idx] == c] for c in range(10)}


def _shape_mask(shape: str, cell_px: int, size: str, rng: np.random.Generator) -> np.ndarray:
    r = (0.27 if size == "small" else 0.44) * cell_px
    jitter = max(1, cell_px // 16)
    cy = (cell_px - 1) / 2 + rng.integers(-jitter, jitter + 1)
    cx = (cell_px - 1) / 2 + rng.integers(-jitter, jitter + 1)
    yy, xx = np.mgrid[0:cell_px, 0:cell_px].astype(np.float32)
    y, x = yy - cy, xx - cx
    if shape == "circle":
        m = x * x + y * y <= r * r
    elif shape == "square":
        m = (np.abs(x) <= 0.8 * r) & (np.abs(y) <= 0.8 * r)
    elif shape == "triangle":
        m = (y >= -r) & (y <= 0.8 * r) & (np.abs(x) <= (y + r) * 0.55)
    elif shape == "cross":
        w = r / 3
        m = ((np.abs(x) <= w) & (np.abs(y) <= r)) | ((np.abs(y) <= w) & (np.abs(x) <= r))
    elif shape == "diamond":
        m = np.abs(x) + np.abs(y) <= r
    elif shape == "ring":
        d2 = x * x + y * y
        m = (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m.astype(np.float32)


def _digit_mask(digit_index: int, cell_px: int, size: str) -> np.ndarray:
    images, _ = _digits()
    img = images[digit_index]
    side = cell_px if size == "large" else max(4, cell_px // 2)
    # nearest-neighbour resize of the 8x8 glyph to side x side
    src = (np.arange(side) * 8 // side).clip(0, 7)
    glyph = img[np.ix_(src, src)]
    mask = np.zeros((cell_px, cell_px), np.float32)
    off = (cell_px - side) // 2
    mask[off:off + side, off:off + side] = glyph
    return mask


def render(objects: list[SceneObject], cell_px: int, rng: np.random.Generator,
           brightness: float = 1.0, noise_std: float = 0.0, background: int = 200) -> np.ndarray:
    """Render a scene to a ``(3*cell_px, 3*cell_px, 3)`` uint8 image."""
    side = GRID * cell_px
    img = np.full((side, side, 3), background, np.float32)
    for ob in objects:
        if ob.shape in DIGIT_SHAPES:
            mask = _digit_mask(ob.digit_index, cell_px, ob.size)
        else:
            mask = _shape_mask(ob.shape, cell_px, ob.size, rng)
        r0, c0 = divmod(ob.cell, GRID)
        ys, xs = slice(r0 * cell_px, (r0 + 1) * cell_px), slice(c0 * cell_px, (c0 + 1) * cell_px)
        colour = np.asarray(COLOURS[ob.colour], np.float32)
        img[ys, xs] = mask[..., None] * colour + (1 - mask[..., None]) * img[ys, xs]
    img *= brightness
    if noise_std > 0:
        img += rng.normal(0.0, noise_std, img.shape).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8)
