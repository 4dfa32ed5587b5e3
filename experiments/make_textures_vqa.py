"""Write `textures-vqa`, a harder VQA dataset fl-sim has never seen: material textures, natural phrasing, 33 answers.

    python experiments/make_textures_vqa.py [OUT_DIR] [--images 3000]

Each picture is a 96x96 JPEG of a tinted material (wood, marble, brick, grass, ... 14 of them, drawn from
procedural noise the way texture photographs look: grain, veins, mortar, blades, ripples) with one to three
square patches of another material in its corners, the patches' tint the background's or another. The
questions are phrased several ways each (what the background is made of, its colour, how many patches,
what they are made of, where a lone patch is, whether the patches share the background's colour); the
answers are short phrases among 33 (14 materials, 10 colours, three counts, four corners, yes and no).
Written as the split sub-folders `load_dataset("imagefolder")` documents: `train/` and `test/`, each with
its `metadata.csv` (different images on each side). Nothing here uses fl-sim's world code.

    [domains.textures]
    path = "data/textures-vqa"
    question_type = "kind"
"""

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

MATERIALS = ["wood", "marble", "brick", "grass", "sand", "water", "fabric", "stone", "cork", "metal",
             "leather", "clouds", "gravel", "bark"]
COLOURS = {"red": (200, 50, 45), "orange": (230, 130, 40), "yellow": (225, 205, 60), "green": (70, 160, 70),
           "blue": (60, 100, 200), "purple": (130, 70, 160), "brown": (130, 85, 50), "grey": (140, 140, 140),
           "pink": (230, 140, 170), "teal": (50, 150, 150)}
COUNTS = ["one", "two", "three"]
CORNERS = ["top left", "top right", "bottom left", "bottom right"]
ASK = {  # question type -> phrasings
    "material": ["What is the background made of?", "Which material covers most of the picture?",
                 "What surface is this a photo of?", "What kind of material fills the picture?"],
    "colour": ["What colour is the background?", "Which colour does the main surface have?",
               "What is the tint of the large surface?"],
    "count": ["How many patches are there?", "How many squares of another material can you see?",
              "Count the small patches in the corners."],
    "patch": ["What are the patches made of?", "Which material are the small squares?",
              "The corner patches look like what material?"],
    "where": ["Where is the patch?", "In which corner is the small square?", "Which corner holds the patch?"],
    "same": ["Are the patches the same colour as the background?", "Do the squares share the background's tint?"],
}


def _noise(rng, size: int, octaves: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1]: random grids of growing resolution, upsampled bilinearly and summed."""
    out = np.zeros((size, size))
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        out += np.asarray(grid.resize((size, size), Image.BILINEAR), float) / 255 / 2 ** o
    return (out - out.min()) / (np.ptp(out) + 1e-9)


def _streaks(rng, size: int, shape: tuple[int, int]) -> np.ndarray:
    """Random values on a ``shape`` grid stretched to ``size`` x ``size``: streaks along the short side."""
    grid = Image.fromarray((rng.random(shape) * 255).astype(np.uint8))
    return np.asarray(grid.resize((size, size), Image.BILINEAR), float) / 255


def _voronoi(rng, size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the nearest of ``cells`` random points, and the index of that point."""
    pts = rng.random((cells, 2)) * size
    yy, xx = np.mgrid[:size, :size]
    d = np.sqrt((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2)
    return np.sort(d, axis=-1)[..., :2], d.argmin(-1)


def texture(rng, material: str, size: int) -> np.ndarray:
    """A grey-level texture of ``material`` in [0, 1]."""
    yy, xx = np.mgrid[:size, :size] / size
    n = _noise(rng, size)
    f = rng.uniform(0.8, 1.2)
    if material == "wood":
        t = 0.5 + 0.5 * np.sin(40 * f * (xx + 0.15 * n))
    elif material == "marble":
        t = 0.5 + 0.5 * np.sin(12 * f * (xx + yy) + 6 * n)
    elif material == "brick":
        rows = np.floor(yy * 8 * f)
        shift = (rows % 2) * 0.5 / 4
        mortar = (np.abs((yy * 8 * f) % 1 - 0.5) > 0.42) | (np.abs(((xx + shift) * 4 * f) % 1 - 0.5) > 0.45)
        t = np.where(mortar, 0.95, 0.35 + 0.3 * n)
    elif material == "grass":
        t = 0.6 * _streaks(rng, size, (8, size)) + 0.4 * n  # vertical blades
    elif material == "sand":
        t = 0.7 + 0.15 * n + 0.15 * rng.random((size, size))
    elif material == "water":
        t = 0.5 + 0.25 * np.sin(25 * f * yy + 4 * n) + 0.25 * np.sin(9 * f * xx + 3 * n)
    elif material == "fabric":
        t = 0.5 + 0.25 * np.sign(np.sin(60 * f * xx)) * np.sign(np.sin(60 * f * yy)) + 0.2 * n
    elif material == "stone":
        d, _ = _voronoi(rng, size, 12)
        t = np.clip((d[..., 1] - d[..., 0]) / 6, 0, 1) * 0.6 + 0.4 * n
    elif material == "cork":
        t = 0.55 + 0.45 * (rng.random((size, size)) > 0.8) * 0.5 - 0.3 * (rng.random((size, size)) > 0.93) + 0.2 * n
    elif material == "metal":
        t = 0.6 + 0.3 * _streaks(rng, size, (size, 6)) + 0.1 * yy  # brushed: horizontal streaks
    elif material == "leather":
        d, _ = _voronoi(rng, size, 60)
        t = 0.4 + 0.4 * np.clip((d[..., 1] - d[..., 0]) / 3, 0, 1) + 0.2 * n
    elif material == "clouds":
        t = _noise(rng, size, 3) ** 1.5
    elif material == "gravel":
        _, idx = _voronoi(rng, size, 40)
        t = rng.random(40)[idx] * 0.7 + 0.3 * n
    else:  # bark
        t = 0.5 + 0.5 * np.sin(30 * f * (xx + 0.4 * _noise(rng, size, 2))) * (0.5 + 0.5 * n)
    return np.clip(t, 0, 1)


def tint(t: np.ndarray, colour: str, rng) -> np.ndarray:
    rgb = np.asarray(COLOURS[colour], float) * rng.uniform(0.9, 1.1)
    return np.clip(t[..., None] * rgb * 1.3, 0, 255)


def picture(rng, size: int = 96):
    bg, other = rng.choice(len(MATERIALS), 2, replace=False)
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    same = bool(rng.random() < 0.5)
    patch_colour = colour if same else rng.choice([c for c in COLOURS if c != colour])
    img = tint(texture(rng, MATERIALS[bg], size), colour, rng)
    count = int(rng.integers(1, 4))
    corners = sorted(rng.choice(4, count, replace=False).tolist())
    side = size * 3 // 8
    for c in corners:
        y, x = (c // 2) * (size - side), (c % 2) * (size - side)
        img[y:y + side, x:x + side] = tint(texture(rng, MATERIALS[other], side), str(patch_colour), rng)
    facts = {"material": MATERIALS[bg], "colour": colour, "count": COUNTS[count - 1], "patch": MATERIALS[other],
             "where": CORNERS[corners[0]] if count == 1 else None, "same": "yes" if same else "no"}
    return Image.fromarray(img.astype(np.uint8)), facts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="data/textures-vqa")
    ap.add_argument("--images", type=int, default=3000, help="pictures (four or five questions each)")
    ap.add_argument("--test-share", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n_test = int(args.images * args.test_share)
    for split, n in (("train", args.images - n_test), ("test", n_test)):
        folder = Path(args.out) / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            img, facts = picture(rng)
            file = f"{split}_{i:05d}.jpg"
            img.save(folder / file, quality=90)
            for kind, answer in facts.items():
                if answer is None:
                    continue
                question = ASK[kind][int(rng.integers(len(ASK[kind])))]
                text = answer.capitalize() + ("" if answer in ("yes", "no") else ".")
                rows.append({"file_name": file, "question": question, "answer": text, "kind": kind})
        with open(folder / "metadata.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["file_name", "question", "answer", "kind"])
            w.writeheader()
            w.writerows(rows)
        print(f"{split}: {n} images, {len(rows)} questions in {folder}")


if __name__ == "__main__":
    main()
