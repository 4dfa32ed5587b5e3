"""Write `fruit-vqa`, a small VQA dataset fl-sim has never seen, as an image folder with metadata.jsonl.

    python experiments/make_fruit_vqa.py [OUT_DIR] [--images 1700]

Its own image style (64x64 PNG stickers on a soft gradient, one fruit per picture, drawn with PIL), its own
phrasing and words outside fl-sim's vocabulary (fruit names, "leaf", "ripe", "basket", ...), three questions
per image. Nothing here uses fl-sim's world code. Use it as a domain in an experiment:

    [domains.fruit]
    path = "data/fruit-vqa"
    question_type = "kind"
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FRUITS = {  # name -> (body shape, colour when ripe, colour when not)
    "apple": ("round", (200, 30, 40), (120, 190, 60)),
    "lemon": ("oval", (245, 220, 40), (160, 200, 70)),
    "plum": ("round", (110, 40, 120), (170, 120, 160)),
    "pear": ("drop", (210, 200, 70), (140, 180, 80)),
    "orange": ("round", (245, 140, 20), (170, 170, 40)),
    "grape": ("bunch", (90, 30, 110), (150, 200, 90)),
}
COUNT = ["no", "one", "two"]


def draw(rng: np.random.Generator, fruit: str, ripe: bool, leaves: int, size: int = 64) -> Image.Image:
    shape, ripe_rgb, raw_rgb = FRUITS[fruit]
    top, bottom = rng.integers(170, 250, 3), rng.integers(120, 200, 3)
    grad = np.linspace(0, 1, size)[:, None, None]
    bg = (top * (1 - grad) + bottom * grad).repeat(size, axis=1).astype(np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    cx, cy = size // 2 + int(rng.integers(-6, 7)), size // 2 + int(rng.integers(-4, 7))
    r = int(rng.integers(14, 19))
    rgb = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in (ripe_rgb if ripe else raw_rgb))
    if shape == "round":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb, outline=(40, 30, 20))
    elif shape == "oval":
        d.ellipse([cx - r - 5, cy - r + 5, cx + r + 5, cy + r - 5], fill=rgb, outline=(40, 30, 20))
    elif shape == "drop":
        d.ellipse([cx - r, cy - 2, cx + r, cy + r + 2], fill=rgb, outline=(40, 30, 20))
        d.ellipse([cx - r // 2, cy - r, cx + r // 2, cy + 4], fill=rgb)
    else:  # bunch: small berries in a triangle
        for row in range(3):
            for k in range(3 - row):
                x, y = cx - 10 + 7 * k + 3 * row, cy - 8 + 7 * row
                d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=rgb, outline=(30, 20, 30))
    d.line([cx, cy - r, cx + 2, cy - r - 8], fill=(90, 60, 30), width=3)  # stalk
    for k in range(leaves):
        side = -1 if k == 0 else 1
        d.ellipse([cx + side * 3 - 6 + side * 4, cy - r - 10, cx + side * 3 + 6 + side * 4, cy - r - 4],
                  fill=(40, 150, 50))
    return img


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="data/fruit-vqa")
    ap.add_argument("--images", type=int, default=1700, help="pictures (three questions each)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    rows = []
    names = list(FRUITS)
    for i in range(args.images):
        fruit, ripe, leaves = names[int(rng.integers(len(names)))], bool(rng.random() < 0.5), int(rng.integers(3))
        file = f"fruit_{i:05d}.png"
        draw(rng, fruit, ripe, leaves).save(out / file)
        rows += [
            {"file_name": file, "question": "Which fruit is in the picture?", "answer": f"The {fruit}.",
             "kind": "which"},
            {"file_name": file, "question": f"Is this {fruit} ripe?", "answer": "Yes" if ripe else "No",
             "kind": "ripe"},
            {"file_name": file, "question": "How many leaves does the stalk have?", "answer": COUNT[leaves].title(),
             "kind": "count"},
        ]
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {args.images} images and {len(rows)} questions to {out}")


if __name__ == "__main__":
    main()
