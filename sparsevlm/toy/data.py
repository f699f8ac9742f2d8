"""Synthetic visual questions: coloured shapes on a 4×4 grid, with questions that depend on
particular regions (and one type, `count_all`, that needs the whole image).

Everything is procedural and seeded: `make_dataset(n, seed)` returns the same samples on every
machine. Each question also carries its *focus*: the image patches it is about, which the
training recipe uses to ground one attention head and the evaluation uses to check that the
model's attention depends on the question.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE = 96  # pixels
GRID = 4  # cells per side
CELL = IMAGE // GRID  # 24 px
PATCH = 12  # vision patch: 2×2 patches per cell, 8×8 = 64 visual tokens
PATCHES = IMAGE // PATCH

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (230, 210, 40),
          "purple": (160, 60, 200)}
SHAPES = ("circle", "square", "triangle", "diamond")
ROWS = "abcd"
CELLS = [f"{r}{c + 1}" for r in ROWS for c in range(GRID)]  # "a1" top-left ... "d4" bottom-right
QUESTION_TYPES = ("color_of", "shape_of", "shape_at", "exists", "where", "count_kind", "count_all")
REGION_TYPES = QUESTION_TYPES[:-1]  # every type but count_all asks about particular regions
SYSTEM = "answer the question about the image ."
MIN_OBJECTS, MAX_OBJECTS = 3, 6


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    cell: int  # 0..15, row-major


@dataclass(frozen=True)
class Sample:
    image_id: int
    objects: tuple[Obj, ...]
    qtype: str
    question: str
    answer: str
    focus: tuple[int, ...]  # indices of the visual patches (0..63) the question is about


def vocabulary() -> list[str]:
    """Every word the toy model reads or writes, special tokens first."""
    words = ["<pad>", "<s>", "</s>", "<image>", "<unk>"]
    words += SYSTEM.split() + ["what", "color", "is", "shape", "at", "there", "a", "where", "how", "many",
                               "are", "objects", "object", "one", "?", "answer", ":", "yes", "no", "nothing"]
    words += list(COLORS) + list(SHAPES) + [s + "s" for s in SHAPES] + CELLS + [str(i) for i in range(10)]
    return list(dict.fromkeys(words))


def naming_words() -> set[str]:
    """Words that name something an image can show: a colour, a shape (singular or plural) or a
    cell. A rater that is one of these is a word about the image (`sparsevlm.eval.rater_precision`)."""
    return set(COLORS) | set(SHAPES) | {s + "s" for s in SHAPES} | set(CELLS)


def cell_patches(cell: int) -> tuple[int, ...]:
    """The 4 visual patches (row-major over 8×8) covering a grid cell."""
    r, c = divmod(cell, GRID)
    per = CELL // PATCH
    return tuple((r * per + i) * PATCHES + c * per + j for i in range(per) for j in range(per))


def render(objects, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 image (IMAGE, IMAGE, 3): shapes of slightly varying size on a dark, noisy background."""
    img = np.full((IMAGE, IMAGE, 3), 30, dtype=np.float64) + rng.normal(0, 6, (IMAGE, IMAGE, 3))
    for o in objects:
        cy, cx = CELL / 2 + rng.uniform(-1.5, 1.5), CELL / 2 + rng.uniform(-1.5, 1.5)
        h = rng.uniform(7.0, 9.5)  # half-size
        m = shape_mask(o.shape, cy, cx, h)
        paint(img, o.cell, m, COLORS[o.color], rng.uniform(0.85, 1.0))
    return np.clip(img, 0, 255).astype(np.uint8)


def shape_mask(shape: str, cy: float, cx: float, h: float) -> np.ndarray:
    """Boolean (CELL, CELL) mask of `shape` centred at (cy, cx) in a cell, half-size `h`."""
    yy, xx = np.mgrid[0:CELL, 0:CELL] + 0.5
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy ** 2 + dx ** 2 <= h ** 2
    if shape == "square":
        return (abs(dy) <= h * 0.85) & (abs(dx) <= h * 0.85)
    if shape == "triangle":
        return (dy <= h * 0.8) & (dy >= -h) & (abs(dx) <= (dy + h) * 0.55)
    return abs(dy) + abs(dx) <= h  # diamond


def paint(img: np.ndarray, cell: int, mask: np.ndarray, rgb, shade: float) -> None:
    """Colour the pixels of `mask` in grid cell `cell` of a float image, in place."""
    r, c = divmod(cell, GRID)
    block = img[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]
    block[mask] = np.array(rgb) * shade


def _objects(rng) -> tuple[Obj, ...]:
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    return tuple(Obj(str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)), int(c)) for c in sorted(cells))


def _focus(objs) -> tuple[int, ...]:
    return tuple(sorted(p for o in objs for p in cell_patches(o.cell)))


def ask(objects, qtype: str, rng) -> tuple[str, str, tuple[int, ...]] | None:
    """One question of `qtype` about `objects`: (question, answer, focus), or None if this image
    cannot carry that type (e.g. no shape is unique)."""
    by_shape = {s: [o for o in objects if o.shape == s] for s in SHAPES}
    by_color = {c: [o for o in objects if o.color == c] for c in COLORS}
    if qtype == "color_of":
        unique = [s for s in SHAPES if len(by_shape[s]) == 1]
        if not unique:
            return None
        s = str(rng.choice(unique))
        return f"what color is the {s}", by_shape[s][0].color, _focus(by_shape[s])
    if qtype == "shape_of":
        unique = [c for c in COLORS if len(by_color[c]) == 1]
        if not unique:
            return None
        c = str(rng.choice(unique))
        return f"what shape is the {c} object", by_color[c][0].shape, _focus(by_color[c])
    if qtype == "shape_at":
        occupied = [o.cell for o in objects]
        empty = [c for c in range(GRID * GRID) if c not in occupied]
        pool = occupied if rng.random() < 0.75 else empty  # mostly ask about an object
        cell = int(pool[int(rng.integers(len(pool)))])
        here = [o for o in objects if o.cell == cell]
        return f"what shape is at {CELLS[cell]}", here[0].shape if here else "nothing", cell_patches(cell)
    if qtype == "exists":
        if rng.random() < 0.5:  # a present object
            o = objects[int(rng.integers(len(objects)))]
            c, s = o.color, o.shape
        else:  # an absent combination
            absent = [(c, s) for c in COLORS for s in SHAPES if not any(o.color == c and o.shape == s for o in objects)]
            c, s = absent[int(rng.integers(len(absent)))]
        match = [o for o in objects if o.color == c and o.shape == s]
        related = match or [o for o in objects if o.color == c or o.shape == s]
        return f"is there a {c} {s}", "yes" if match else "no", _focus(related)
    if qtype == "where":
        unique = [o for o in objects if sum(p.color == o.color and p.shape == o.shape for p in objects) == 1]
        if not unique:
            return None
        o = unique[int(rng.integers(len(unique)))]
        return f"where is the {o.color} {o.shape}", CELLS[o.cell], _focus([o])
    if qtype == "count_kind":
        if rng.random() < 0.5:
            s = str(rng.choice(SHAPES))
            return f"how many {s}s are there", str(len(by_shape[s])), _focus(by_shape[s])
        c = str(rng.choice(list(COLORS)))
        return f"how many {c} objects are there", str(len(by_color[c])), _focus(by_color[c])
    if qtype == "count_all":
        return "how many objects are there", str(len(objects)), _focus(objects)
    raise ValueError(f"qtype={qtype!r} is not a question type; allowed: {', '.join(QUESTION_TYPES)}")


def prompt(question: str) -> str:
    """The text the model reads: system words, the image, the question."""
    return f"<s> {SYSTEM} <image> {question} ? answer :"


def make_dataset(n_images: int, seed: int, questions_per_image: int = 4):
    """`n_images` images with `questions_per_image` questions each (types drawn uniformly among
    those the image can carry). Returns (samples, images uint8 (n_images, IMAGE, IMAGE, 3))."""
    rng = np.random.default_rng(seed)
    samples, images = [], []
    for i in range(n_images):
        objs = _objects(rng)
        images.append(render(objs, rng))
        types = rng.permutation(QUESTION_TYPES)
        asked = 0
        for qtype in types:
            if asked == questions_per_image:
                break
            q = ask(objs, str(qtype), rng)
            if q is not None:
                samples.append(Sample(i, objs, str(qtype), *q))
                asked += 1
    return samples, np.stack(images)
