"""What a shapes image shows, and which split it belongs to: held out means unseen.

A *composition* is the set of objects in an image, each a (position, shape, colour, size). The
renderer adds no jitter and no noise, so a composition fixes the pixels (at a given image size)
and the caption. Only 432 one-object compositions exist (9 x 4 x 6 x 2), so splits drawn as
separate random streams shared most of them (docs/experiments.md, "Held out means unseen").
Here each composition belongs to exactly one split:

- ``novel``: every composition holding one of ``NOVEL_PAIRS`` (colour x shape pairs that train,
  val and test never show; the systematic held-out combinations of CLEVR-CoGenT and SCAN, which
  ask whether a model composes a colour and a shape it has only seen apart);
- otherwise a stable hash of the canonical form (``composition_key``: objects sorted by cell)
  places it in ``[0, 1)``: below ``HELD_OUT[n]`` is ``val``, the next ``HELD_OUT[n]`` is ``test``,
  the rest ``train``, with ``n`` the object count (one-object compositions are few, so val and test
  take a larger share of them: ~40 each, and train keeps ~300).

The assignment depends on neither the seed nor the image size: a model trained at any seed is
evaluated at any seed on compositions it never saw. A split's stream draws its items by
rejection (``draw_objects``).
"""

from __future__ import annotations

import hashlib

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")  # raster order of the 3x3 grid
MAX_OBJECTS = 3

SPLITS = ("train", "val", "test", "novel")
# (colour, shape) pairs only the "novel" split shows: distinct colours and distinct shapes, so each
# colour still appears with 3 shapes and each shape with 5 colours in train.
NOVEL_PAIRS = (("red", "triangle"), ("green", "cross"), ("blue", "circle"))
# share of the (non-novel) compositions with n objects in val, and as much again in test
HELD_OUT = {1: 0.10, 2: 0.05, 3: 0.05}
# versioned: changing the assignment means changing this, and every split's stream with it
HASH_PREFIX = b"trilemma shapes split v1\n"
SPLIT_RULE = "by composition v1"  # named in ShapesDataset's repr, so caches keyed by it follow the rule
MAX_DRAWS = 10_000  # the rarest acceptance (3 objects in val) is ~3%: ~30 draws on average


def composition_key(objects: list[dict]) -> str:
    """The canonical form: ``position:size colour shape`` per object, sorted by cell, joined by ';'.

    Independent of the caption's wording, so rewording captions never moves a composition.
    """
    if not 1 <= len(objects) <= MAX_OBJECTS:
        raise ValueError(f"a composition has 1 to {MAX_OBJECTS} objects, got {len(objects)}")
    by_cell = sorted(objects, key=lambda o: POSITIONS.index(o["position"]))
    return ";".join(f"{o['position']}:{o['size']} {o['color']} {o['shape']}" for o in by_cell)


def composition_hash(objects: list[dict]) -> float:
    """A stable number in [0, 1) for a composition: SHA-256 of its canonical form (never ``hash()``)."""
    digest = hashlib.sha256(HASH_PREFIX + composition_key(objects).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def novel_pairs(objects: list[dict]) -> list[str]:
    """The held-out ``NOVEL_PAIRS`` a composition shows, as sorted "colour shape" strings."""
    return sorted({f"{o['color']} {o['shape']}" for o in objects
                   if (o["color"], o["shape"]) in NOVEL_PAIRS})


def split_of(objects: list[dict]) -> str:
    """The one split a composition belongs to: "novel", "val", "test" or "train"."""
    if novel_pairs(objects):
        return "novel"
    share = HELD_OUT[len(objects)]
    u = composition_hash(objects)
    return "val" if u < share else "test" if u < 2 * share else "train"


def sample_objects(rng: np.random.Generator, n: int) -> list[dict]:
    """``n`` objects in distinct cells with uniform attributes, listed in raster order."""
    cells = sorted(rng.choice(len(POSITIONS), size=n, replace=False).tolist())
    return [{"shape": SHAPES[int(rng.integers(len(SHAPES)))],
             "color": COLORS[int(rng.integers(len(COLORS)))],
             "size": SIZES[int(rng.integers(len(SIZES)))],
             "position": POSITIONS[c]} for c in cells]


def draw_objects(rng: np.random.Generator, split: str) -> list[dict]:
    """A composition of ``split``, by rejection from the item's own RNG.

    The object count (1 to ``MAX_OBJECTS``, uniform) is drawn once, then the objects are redrawn
    from the same RNG until the composition belongs to ``split``: every split keeps a third of
    each count, and within a count its compositions are uniform. A pure function of the RNG's state.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown `split` {split!r}: expected one of {', '.join(SPLITS)}")
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(MAX_DRAWS):
        objects = sample_objects(rng, n)
        if split_of(objects) == split:
            return objects
    raise RuntimeError(f"no {n}-object composition of split {split!r} in {MAX_DRAWS} draws")

