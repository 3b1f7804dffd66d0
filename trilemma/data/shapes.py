"""The embedded default dataset: procedurally drawn, captioned shapes with exact ground truth.

Idea: a CLEVR-like synthetic world small enough to train on a laptop CPU, where every image is
a pure function of ``(seed, split, index)`` and comes with its attributes, so text-to-image
generation can be scored *exactly* (did the model draw a large red circle at the top left?)
instead of only with feature-space statistics.

An image is a 3x3 grid of cells on a black background holding 1-3 objects, each in its own
cell. An object has a shape, a colour, a size and a position (its cell). Rendering is pure
numpy with integer anti-aliasing (supersample, count covered sub-pixels), so pixels are
bit-identical on every machine.

Held out means unseen: each composition (the objects and their attributes, which fix the image)
belongs to exactly one split, ``train``, ``val``, ``test`` or ``novel`` (the held-out colour x
shape pairs), by a stable hash; ``compositions.py`` holds the world's vocabulary and that rule.

Caption grammar (``caption`` and ``parse_caption`` are exact inverses)::

    caption  := object ("," object)* " and " object | object
    object   := "a " size " " colour " " shape " " place
    place    := "at the top left" | "at the top" | "at the top right" | "on the left"
              | "in the center" | "on the right" | "at the bottom left" | "at the bottom"
              | "at the bottom right"

e.g. "a large red circle at the top left, a small cyan cross in the center and a small blue
square at the bottom right". Objects are listed in raster order of their cells, so a caption
is a function of the image. ``parse_caption`` is lenient where meaning is unambiguous (size
may be omitted, "an"/"the"/"at"/"on"/"in" are interchangeable, "centre"/"middle" = "center").
"""

from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import torch

from trilemma.data.compositions import (COLORS, POSITIONS, SHAPES, SIZES, SPLIT_RULE, SPLITS, draw_objects,
                                        novel_pairs)

# Corners of the RGB cube: maximally separated, saturated, and exactly representable in uint8.
RGB = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255),
}
EXTENT = {"small": 0.52, "large": 0.88}  # object bounding box as a fraction of its cell side
SUPERSAMPLE = 4  # sub-pixels per pixel side for anti-aliasing
SPLIT_IDS = {split: i for i, split in enumerate(SPLITS)}  # part of each item's seed
DEFAULT_LENGTH = {"train": 50_000, "val": 1_000, "test": 1_000, "novel": 1_000}
MIN_SIZE, MAX_SIZE = 16, 256

# "in the center", "on the left" / "on the right", "at the <anything else>"
_PLACE = {p: {"center": "in", "left": "on", "right": "on"}.get(p, "at") + " the " + p
          for p in POSITIONS}


# ---------------------------------------------------------------------------------- captions
def caption(attributes: list[dict]) -> str:
    """The caption of a list of objects (each a dict with shape, color, size, position)."""
    if not attributes:
        raise ValueError("a caption needs at least one object")
    parts = []
    for a in attributes:
        size = f"{a['size']} " if a.get("size") is not None else ""
        parts.append(f"a {size}{a['color']} {a['shape']} {_PLACE[a['position']]}")
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


_SYNONYMS = {"centre": "center", "middle": "center", "an": "a"}
_SKIP = {"at", "on", "in", "the", "of", "a"}  # filler between the object words


def parse_caption(text: str) -> list[dict]:
    """Parse a shapes caption into its objects: ``[{shape, color, size, position}, ...]``.

    The size may be omitted (then ``size`` is None); colour, shape and position are required.
    Raises ValueError naming the first word that does not fit the grammar.
    """
    words = re.findall(r"[a-z]+|,", text.lower())
    words = [_SYNONYMS.get(w, w) for w in words]
    if not words:
        raise ValueError(f"cannot parse an empty caption: {text!r}")
    objects, i = [], 0
    while i < len(words):
        obj, i = _parse_object(words, i, text)
        objects.append(obj)
        if i < len(words) and words[i] == "a":  # the next object, its comma lost (``text.words`` drops it)
            continue
        if i < len(words):  # a separator must follow: ",", "and" or ", and"
            if words[i] not in (",", "and"):
                raise ValueError(f"unknown word {words[i]!r} in caption {text!r}: "
                                 "expected ',' or 'and' between objects")
            i += 1
            if i < len(words) and words[i] == "and":
                i += 1
            if i == len(words):
                raise ValueError(f"caption {text!r} ends after a separator")
    return objects


def _parse_object(words: list[str], i: int, text: str) -> tuple[dict, int]:
    def expect(options: tuple[str, ...], what: str) -> str:
        if i >= len(words):
            raise ValueError(f"caption {text!r} ends early: expected {what} ({', '.join(options)})")
        if words[i] not in options:
            raise ValueError(f"unknown word {words[i]!r} in caption {text!r}: expected {what} "
                             f"({', '.join(options)})")
        return words[i]

    if i < len(words) and words[i] == "a":
        i += 1
    size = None
    if i < len(words) and words[i] in SIZES:
        size, i = words[i], i + 1
    color = expect(COLORS, "a colour"); i += 1
    shape = expect(SHAPES, "a shape"); i += 1
    while i < len(words) and words[i] in _SKIP:
        i += 1
    place = []
    while i < len(words) and words[i] in ("top", "bottom", "left", "right", "center"):
        place.append(words[i]); i += 1
    position = " ".join(place)
    if position not in POSITIONS:
        if place or i >= len(words) or words[i] in (",", "and"):
            problem = f"position {position!r}" if place else f"no position after {shape!r}"
        else:
            problem = f"unknown word {words[i]!r}"
        raise ValueError(f"{problem} in caption {text!r}: expected a position "
                         f"({', '.join(POSITIONS)})")
    return {"shape": shape, "color": color, "size": size, "position": position}, i


# ------------------------------------------------------------------------------------- cells
def attributes_to_cells(attributes: list[dict]) -> torch.Tensor:
    """Objects -> LongTensor [9, 3], one row per grid cell in raster order (``POSITIONS``).

    Columns: ``shape`` = index in SHAPES + 1 (0 = empty cell), ``color`` = index in COLORS,
    ``size`` = index in SIZES. An empty cell has colour 0 and size 0 (read them only where
    shape > 0). A colour or size given as None (e.g. a prompt that omits the size) is -1,
    meaning "unspecified": scoring should not check it.
    """
    cells = torch.zeros(len(POSITIONS), 3, dtype=torch.long)
    for a in attributes:
        cell = _index(POSITIONS, a["position"], "position")
        if cells[cell, 0] != 0:
            raise ValueError(f"two objects share the cell {a['position']!r}")
        cells[cell, 0] = _index(SHAPES, a["shape"], "shape") + 1
        cells[cell, 1] = -1 if a.get("color") is None else _index(COLORS, a["color"], "color")
        cells[cell, 2] = -1 if a.get("size") is None else _index(SIZES, a["size"], "size")
    return cells


def cells_to_attributes(cells: torch.Tensor) -> list[dict]:
    """Inverse of ``attributes_to_cells``: objects in raster order of their cells."""
    if tuple(cells.shape) != (len(POSITIONS), 3):
        raise ValueError(f"expected cells of shape [9, 3], got {list(cells.shape)}")
    out = []
    for cell, (shape, color, size) in enumerate(cells.tolist()):
        if shape == 0:
            continue
        out.append({"shape": SHAPES[shape - 1], "color": None if color < 0 else COLORS[color],
                    "size": None if size < 0 else SIZES[size], "position": POSITIONS[cell]})
    return out


def _index(options: tuple[str, ...], value: str, what: str) -> int:
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}: expected one of {', '.join(options)}")
    return options.index(value)


# --------------------------------------------------------------------------------- rendering
def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, h: float) -> np.ndarray:
    """Boolean mask of sub-pixels inside a shape of half-extent h centred at (0, 0)."""
    if shape == "circle":  # squared distances only: no transcendental functions, bit-exact
        return dx * dx + dy * dy <= h * h
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":  # apex up, base at the bottom, as wide as it is tall
        return (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
    if shape == "cross":  # a plus sign; arms ~0.36 of the extent thick to survive at 32 px
        t = 0.36 * h
        box = (np.abs(dx) <= h) & (np.abs(dy) <= h)
        return box & ((np.abs(dx) <= t) | (np.abs(dy) <= t))
    raise ValueError(f"unknown shape {shape!r}: expected one of {', '.join(SHAPES)}")


def render(attributes: list[dict], size: int = 32) -> np.ndarray:
    """Draw objects into a uint8 [size, size, 3] image (black background, anti-aliased).

    Each sub-pixel belongs to at most one object (objects sit inside their own cells), so a
    pixel is ``round(colour * covered / SUPERSAMPLE**2)`` per object, computed in integers.
    """
    check_size(size)
    ss = SUPERSAMPLE
    hi = size * ss
    # sub-pixel centres in grid units: the image spans [0, 3) x [0, 3)
    coords = (np.arange(hi, dtype=np.float64) + 0.5) * (3.0 / hi)
    covered = np.zeros((hi, hi), dtype=np.int64)  # colour index + 1 per sub-pixel, 0 = none
    for a in attributes:
        cell = POSITIONS.index(a["position"])
        row, col = divmod(cell, 3)
        # only the sub-pixels of this cell can be covered: work on that window
        r0, r1 = (row * hi) // 3, -(-((row + 1) * hi) // 3)
        c0, c1 = (col * hi) // 3, -(-((col + 1) * hi) // 3)
        dy = coords[r0:r1, None] - (row + 0.5)
        dx = coords[None, c0:c1] - (col + 0.5)
        mask = _inside(a["shape"], dx, dy, EXTENT[a["size"]] / 2)
        covered[r0:r1, c0:c1][mask] = COLORS.index(a["color"]) + 1
    palette = np.array([(0, 0, 0)] + [RGB[c] for c in COLORS], dtype=np.int64)
    sums = palette[covered].reshape(size, ss, size, ss, 3).sum(axis=(1, 3))
    n = ss * ss
    return ((2 * sums + n) // (2 * n)).astype(np.uint8)  # integer round-half-up of sums / n


def check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"shapes image size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], "
                         f"got {size!r}")


def uint8_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float() / 127.5 - 1.0


# ----------------------------------------------------------------------------------- dataset
class ShapesDataset(torch.utils.data.Dataset):
    """Captioned shapes; item ``(seed, split, index)`` is identical in any process.

    Indexable at any ``index >= 0`` (the stream is infinite); ``len()`` is ``length``, which
    defaults to 50k train / 1k val / 1k test / 1k novel. The per-item RNG is
    ``SeedSequence([seed, split_id, index])`` (never Python's salted ``hash()``), so an item does
    not depend on which others were drawn before it; it draws only compositions of its split
    (``compositions.draw_objects``), so no two splits share a composition, hence no image or
    caption. ``"novel"`` holds every composition showing a held-out colour x shape pair.

    Items add to the common dict ``"split"`` (the composition's split, the dataset's) and
    ``"novel_pairs"`` (the held-out pairs it shows, e.g. ``["red triangle"]``; empty outside
    ``"novel"``), so an evaluation that mixes splits can report each on its own.
    """

    def __init__(self, split: str = "train", size: int = 32, seed: int = 0,
                 length: int | None = None):
        if split not in SPLIT_IDS:
            raise ValueError(f"unknown `split` {split!r}: expected one of {', '.join(SPLIT_IDS)}")
        check_size(size)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.length = DEFAULT_LENGTH[split] if length is None else int(length)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(self.length))

    def attributes(self, index: int) -> list[dict]:
        """The objects of item ``index`` without rendering it (cheap)."""
        if index < 0:
            raise IndexError(f"shapes index must be >= 0, got {index}")
        ss = np.random.SeedSequence([self.seed, SPLIT_IDS[self.split], int(index)])
        return draw_objects(np.random.Generator(np.random.PCG64(ss)), self.split)

    def __getitem__(self, index: int) -> dict:
        attrs = self.attributes(index)
        image = uint8_to_tensor(render(attrs, self.size))
        return {"image": image, "caption": caption(attrs), "attributes": attrs,
                "split": self.split, "novel_pairs": novel_pairs(attrs)}

    def __repr__(self) -> str:
        return (f"ShapesDataset(split={self.split!r}, size={self.size}, seed={self.seed}, "
                f"length={self.length}, splits={SPLIT_RULE!r})")
