"""Domains: how scenes are drawn and rendered, and what questions are asked about them.

``source``  geometric shapes (circle, square, triangle) in the source palette (red, green, blue, yellow).
``dusk``    appearance shift: the same shapes at low light with sensor noise, painted in another palette
            (orange, purple, cyan, pink).
``novel``   novel-concept shift: shapes the device models never saw in pretraining (cross, diamond, ring).
``digits``  real data: handwritten digits from scikit-learn's ``load_digits`` (disjoint writers' samples
            for train and test), painted in the source palette; the digit is the object's "shape".

A domain is four factors: shapes, palette, lighting (brightness) and sensor noise. ``A+B`` names the
combination of two shifts (``novel+dusk``: novel shapes in the dusk palette at low light, with noise): each
part brings the factors in which it differs from ``source``; two parts that shift the same factor do not
combine. ``COMBINED`` are the combinations fl-sim evaluates; the generalist teacher (``compositional_cells``)
trains on every other combination of the factors, never on these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_sim import FlSimError
from fl_sim.world.scenes import (
    COLOURS,
    DIGIT_SHAPES,
    GEOMETRIC_SHAPES,
    GRID,
    POSITIONS,
    SIZES,
    SceneObject,
    digit_pool,
    render,
)


@dataclass(frozen=True)
class Domain:
    name: str
    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    brightness: float = 1.0
    noise_std: float = 0.0
    description: str = ""


DOMAINS: dict[str, Domain] = {
    "source": Domain("source", ("circle", "square", "triangle"), ("red", "green", "blue", "yellow"),
                     description="geometric shapes, source palette"),
    "dusk": Domain("dusk", ("circle", "square", "triangle"), ("orange", "purple", "cyan", "pink"),
                   brightness=0.5, noise_std=10.0, description="appearance shift: low light, noise, other palette"),
    "novel": Domain("novel", ("cross", "diamond", "ring"), ("red", "green", "blue", "yellow"),
                    description="novel-concept shift: unseen shapes"),
    "digits": Domain("digits", tuple(DIGIT_SHAPES), ("red", "green", "blue", "yellow"),
                     description="real handwritten digits (scikit-learn load_digits)"),
}
SHIFTED = [d for d in DOMAINS if d != "source"]
COMBINED = ["novel+dusk", "digits+dusk"]  # shifts never seen together by any model: compositional tests
FACTORS = ("shapes", "colours", "brightness", "noise_std")
FAMILIES = ["exist", "count", "colour", "shape", "position", "caption"]
VQA_FAMILIES = FAMILIES[:-1]
COUNT_WORDS = ["zero", "one", "two", "three", "four"]
CAPTION_QUESTION = "describe the image ."


def combine(name: str) -> Domain:
    """The domain ``name`` = ``A+B[+...]`` of built-in domains: each part's factors that differ from
    ``source``. ``ValueError`` for an unknown part or two parts shifting the same factor."""
    base, factors, owner, first = DOMAINS["source"], {}, {}, {}
    for part in name.split("+"):
        if part not in DOMAINS or part == "source":
            raise ValueError(f"{part!r} in {name!r} is not a shifted built-in domain ({', '.join(SHIFTED)})")
        for f in FACTORS:
            value = getattr(DOMAINS[part], f)
            if value != getattr(base, f):
                if f in factors:
                    raise ValueError(f"{owner[f]!r} and {part!r} in {name!r} both shift the {f.split('_')[0]}")
                factors[f], owner[f] = value, part
                first.setdefault(part, FACTORS.index(f))
    canonical = "+".join(sorted(name.split("+"), key=lambda p: first.get(p, len(FACTORS))))
    if name != canonical:
        raise ValueError(f"write it {canonical!r} (the shape shift first)")
    return Domain(name, *(factors.get(f, getattr(base, f)) for f in FACTORS),
                  description="combination of " + " and ".join(name.split("+")))


def get_domain(name: str) -> Domain:
    """A built-in domain or a combination ``A+B`` of shifted ones."""
    if name in DOMAINS:
        return DOMAINS[name]
    if "+" in name:
        try:
            return combine(name)
        except ValueError as e:
            raise FlSimError(f"unknown domain {name!r}: {e}") from None
    raise FlSimError(f"unknown domain {name!r}; allowed: {', '.join(DOMAINS)}, or A+B of shifted ones "
                     f"(e.g. {COMBINED[0]})")


def domain_error(name: str, declared=()) -> str | None:
    """Why ``name`` is not a domain (one line), or ``None`` when it is one: built in, a combination, or among
    ``declared`` (the run's domains backed by datasets on disk)."""
    if name in declared:
        return None
    try:
        get_domain(name)
    except FlSimError as e:
        return str(e)
    return None


def compositional_cells(held_out=COMBINED) -> list[Domain]:
    """Every combination of the built-in domains' factors (shape set x palette x lighting x noise), except
    those equal to a ``held_out`` domain: the generalist teacher's training world."""
    from itertools import product

    values = {f: list(dict.fromkeys(getattr(d, f) for d in DOMAINS.values())) for f in FACTORS}
    excluded = {tuple(getattr(get_domain(h), f) for f in FACTORS) for h in held_out}
    cells = []
    for combo in product(*(values[f] for f in FACTORS)):
        if combo not in excluded:
            shapes, colours, light, noise = combo
            cells.append(Domain(f"cell-{len(cells)}", shapes, colours, light, noise,
                                description="compositional training cell"))
    return cells


def sample_scene(domain: Domain, rng: np.random.Generator, split: str, max_objects: int = 4) -> list[SceneObject]:
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    pool = digit_pool(split) if domain.shapes[0] in DIGIT_SHAPES else None
    objs = []
    for cell in sorted(int(c) for c in cells):
        shape = str(rng.choice(domain.shapes))
        digit_index = int(rng.choice(pool[int(shape)])) if pool is not None else -1
        objs.append(SceneObject(shape, str(rng.choice(domain.colours)), str(rng.choice(SIZES)), cell, digit_index))
    return objs


def caption(objects: list[SceneObject]) -> str:
    """Row-major description, e.g. ``small red circle top left and large blue square center``."""
    return " and ".join(f"{o.size} {o.colour} {o.shape} {o.position}" for o in objects)


def parse_caption(text: str) -> list[SceneObject] | None:
    """The objects a caption in :func:`caption`'s grammar describes (its inverse, without digit images), or
    ``None`` when ``text`` is not such a caption (an unknown word, a cell named twice)."""
    objects, cells = [], set()
    for part in text.split(" and "):
        w = part.split()
        position = " ".join(w[3:])
        if (len(w) < 4 or w[0] not in SIZES or w[1] not in COLOURS or w[2] not in GEOMETRIC_SHAPES + DIGIT_SHAPES
                or position not in POSITIONS or POSITIONS.index(position) in cells):
            return None
        cells.add(POSITIONS.index(position))
        objects.append(SceneObject(w[2], w[1], w[0], POSITIONS.index(position)))
    return objects


def questions_from_captions(captions: list[str], k: int, rng: np.random.Generator,
                            exclude: list[str] | None = None) -> list[tuple[int, str]]:
    """Up to ``k`` questions about each image, of distinct VQA families, from a caption of it: ``(image, question)``.

    What a cloud LLM does to turn image descriptions into instruction data: the questions are the world's
    templates (:func:`ask`) over the objects a caption names, with the colours and shapes of all
    ``captions`` as the vocabulary of "is there a ...?" questions whose answer is no. Only the questions
    come from the caption; whoever answers them (the teacher) sees the image. A caption that does not parse
    gives none, and ``exclude[i]`` (the question image ``i`` came with) is not asked again.
    """
    scenes = [parse_caption(c) for c in captions]
    seen = [o for objs in scenes if objs for o in objs]
    if not seen:
        return []
    vocab = Domain("captions", tuple(sorted({o.shape for o in seen})), tuple(sorted({o.colour for o in seen})))
    out = []
    for i, objs in enumerate(scenes):
        if not objs:
            continue
        asked = {exclude[i]} if exclude else set()
        for family in rng.permutation(VQA_FAMILIES)[:k]:
            qa = ask(objs, vocab, str(family), rng)
            if qa is not None and qa[0] not in asked:
                asked.add(qa[0])
                out.append((i, qa[0]))
    return out


def _unique(objects, key):
    vals = [key(o) for o in objects]
    return [o for o, v in zip(objects, vals) if vals.count(v) == 1]


def ask(objects: list[SceneObject], domain: Domain, family: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """A (question, answer) pair of ``family`` about the scene, or ``None`` if the scene cannot support it."""
    if family == "exist":
        if rng.random() < 0.5:
            o = objects[int(rng.integers(len(objects)))]
            return f"is there a {o.colour} {o.shape} ?", "yes"
        present = {(o.colour, o.shape) for o in objects}
        for _ in range(20):
            c, s = str(rng.choice(domain.colours)), str(rng.choice(domain.shapes))
            if (c, s) not in present:
                return f"is there a {c} {s} ?", "no"
        return None
    if family == "count":
        shape = objects[int(rng.integers(len(objects)))].shape if rng.random() < 0.7 else str(rng.choice(domain.shapes))
        n = sum(o.shape == shape for o in objects)
        return (f"how many {shape} are there ?", COUNT_WORDS[n]) if n < len(COUNT_WORDS) else None
    if family == "colour":
        cands = _unique(objects, lambda o: o.shape)
        if not cands:
            return None
        o = cands[int(rng.integers(len(cands)))]
        return f"what colour is the {o.shape} ?", o.colour
    if family == "shape":
        cands = _unique(objects, lambda o: o.colour)
        if not cands:
            return None
        o = cands[int(rng.integers(len(cands)))]
        return f"what shape is the {o.colour} object ?", o.shape
    if family == "position":
        cands = _unique(objects, lambda o: (o.colour, o.shape))
        if not cands:
            return None
        o = cands[int(rng.integers(len(cands)))]
        return f"where is the {o.colour} {o.shape} ?", o.position
    if family == "caption":
        return CAPTION_QUESTION, caption(objects)
    raise FlSimError(f"unknown question family {family!r}; allowed: {', '.join(FAMILIES)}")


def make_sample(domain: Domain, rng: np.random.Generator, split: str, cell_px: int,
                families: list[str] | None = None) -> dict:
    """One sample: a rendered scene with one question of a family drawn uniformly from ``families``."""
    families = families or FAMILIES
    while True:
        objects = sample_scene(domain, rng, split)
        family = str(rng.choice(families))
        qa = ask(objects, domain, family, rng)
        if qa is not None:
            break
    image = render(objects, cell_px, rng, domain.brightness, domain.noise_std)
    return {
        "image": image, "question": qa[0], "answer": qa[1], "family": family, "domain": domain.name,
        "caption": caption(objects),
        "objects": objects,
    }


def corpus_words() -> list[str]:
    """Every word any question, answer or caption can contain (the closed vocabulary)."""
    from fl_sim.world.scenes import COLOURS, GEOMETRIC_SHAPES, POSITIONS

    words = set("is there a how many are what colour the shape object where describe image and ? .".split())
    words |= set(COUNT_WORDS) | {"yes", "no"} | set(SIZES) | set(COLOURS) | set(GEOMETRIC_SHAPES) | set(DIGIT_SHAPES)
    for p in POSITIONS:
        words |= set(p.split())
    return sorted(words)
