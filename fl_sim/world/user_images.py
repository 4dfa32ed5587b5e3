"""A user dataset's image, whatever its encoding, as the fleet's ``(side, side, 3)`` uint8 RGB.

Faithful or refused: 16-bit and 32-bit integer images are scaled to 8 bits (not clipped to white), float
images in [0, 1] or [0, 255] are scaled (NaN or infinite pixels are refused), palette, CMYK, greyscale and
two-channel images convert through PIL, and transparent pixels are laid on white (not on black, which
would turn a transparent background into a dark one). An image a dataset names by path is read only from
inside the dataset's folder (``fl_sim.world.user_sources.inside``).
"""

from __future__ import annotations

import io

import numpy as np


class ImageError(ValueError):
    """The image cannot be converted faithfully (the message says why)."""


def to_rgb(value, side: int, open_path) -> np.ndarray:
    """``value`` (a PIL image, encoded bytes, a ``{"bytes", "path"}`` dict, a path string, or an array) as
    ``(side, side, 3)`` uint8 RGB, resized bilinearly. ``open_path(str)`` opens a path the dataset names
    (and refuses one outside it)."""
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        value = Image.open(io.BytesIO(value))
    elif isinstance(value, str):
        value = open_path(value)
    elif value is None:
        raise ImageError("no image")
    if not isinstance(value, Image.Image):
        value = Image.fromarray(_array_to_uint8(np.asarray(value)))
    return np.asarray(_rgb(value).resize((side, side), Image.BILINEAR), dtype=np.uint8)


def _rgb(im):
    """A PIL image of any mode as RGB, by value (not by PIL's clipping conversions)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_array_to_uint8(np.asarray(im))).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """An image array of any dtype as uint8, scaled by its type's range (integers) or its values' (floats)."""
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == bool:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.min(initial=0) < 0:
            raise ImageError(f"negative pixel values in a {arr.dtype} image")
        top = arr.max(initial=0)  # the type's range where it says it (uint16), else the values'
        bits = 16 if arr.dtype == np.uint16 else 8 if top < 256 else 16 if top < 65536 else 32
        out = (arr.astype(np.float64) * (255.0 / (2 ** bits - 1))).round().astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("NaN or infinite pixel values")
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
        if lo < 0 or hi > 255:
            raise ImageError(f"float pixel values from {lo:g} to {hi:g}, neither within [0, 1] nor [0, 255]")
        out = (arr * (255.0 if hi <= 1.0 else 1.0)).round().astype(np.uint8)
    else:
        raise ImageError(f"pixels of type {arr.dtype}")
    if out.ndim == 3 and out.shape[2] == 2:  # grey + alpha, over white
        a = out[:, :, 1].astype(np.float64) / 255
        out = (out[:, :, 0] * a + 255 * (1 - a)).round().astype(np.uint8)
    if out.ndim == 3 and out.shape[2] == 4:
        a = out[:, :, 3:4].astype(np.float64) / 255
        out = (out[:, :, :3] * a + 255 * (1 - a)).round().astype(np.uint8)
    if out.ndim not in (2, 3) or (out.ndim == 3 and out.shape[2] not in (1, 3)):
        raise ImageError(f"an array of shape {arr.shape} is not an image")
    return out[:, :, 0] if out.ndim == 3 and out.shape[2] == 1 else out
