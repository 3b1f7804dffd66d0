"""Datasets: the embedded ``shapes`` world, any folder of captioned images, the text tokenizer.

Every dataset yields the same item dict, so training and evaluation never care which one they
got: ``{"image": float32 [3, H, W] in [-1, 1], "caption": str, "attributes": list | None, ...}``
(``attributes`` is the exact ground truth on shapes, None on folders; folders add ``"path"``,
shapes ``"split"`` and ``"novel_pairs"``). Held-out splits are unseen: no composition (shapes) or
file content (folders) is in two splits; ``split_overlap`` measures it.
Data knows no model: nothing here imports tokenizers or generators.
"""

from __future__ import annotations

import os

import torch

from trilemma.data.compositions import (COLORS, NOVEL_PAIRS, POSITIONS, SHAPES, SIZES,
                                        composition_key, split_of)
from trilemma.data.folder import FolderDataset
from trilemma.data.overlap import folder_overlap, split_overlap
from trilemma.data.shapes import (ShapesDataset, attributes_to_cells, caption, cells_to_attributes,
                                  parse_caption)
from trilemma.data.text import TextTokenizer

__all__ = ["COLORS", "NOVEL_PAIRS", "POSITIONS", "SHAPES", "SIZES", "FolderDataset", "ShapesDataset",
           "InMemory", "TextTokenizer", "attributes_to_cells", "caption", "cells_to_attributes", "collate",
           "composition_key", "folder_overlap", "load_dataset", "parse_caption", "split_of", "split_overlap"]


def load_dataset(name_or_path: str, split: str = "train", size: int = 32, seed: int = 0,
                 length: int | None = None, random_crop: float = 0.0) -> torch.utils.data.Dataset:
    """``"shapes"`` -> ShapesDataset; an existing directory -> FolderDataset.

    ``split``: ``"train"``, ``"val"``, ``"test"`` (disjoint by a stable hash, about 90/5/5: shapes
    by composition, a folder by file content), ``"novel"`` (shapes: the compositions with a held-out colour x shape pair) or
    ``"all"`` (a folder: every image). ``seed`` and ``length`` only apply to shapes (a folder is
    what it is). ``random_crop`` > 0: a folder's images as random crops of at least that fraction of
    their shorter side (training views; shapes refuses it).
    """
    name = str(name_or_path)
    if name == "shapes":
        if random_crop:
            raise ValueError("`random_crop` applies to a folder of images; shapes draws its images whole")
        return ShapesDataset(split=split, size=size, seed=seed, length=length)
    if os.path.isdir(name):
        return FolderDataset(name, size=size, split=split, random_crop=random_crop)
    if os.path.exists(name):
        raise ValueError(f"{name!r} is a file: expected 'shapes' or a directory of images")
    raise ValueError(f"unknown dataset {name!r}: expected 'shapes' or a directory of images "
                     "(no such directory)")


class InMemory(torch.utils.data.Dataset):
    """The first ``n`` items of ``dataset``, made once and held in memory: for short trainings that
    draw many random batches from a generated dataset (a shapes item takes ~1.5 ms to draw; the
    demo's contrastive scorer spent 60% of its time drawing). Its ``repr`` names the source."""

    def __init__(self, dataset: torch.utils.data.Dataset, n: int):
        self.source, self.items = dataset, [dataset[i] for i in range(min(n, len(dataset)))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]

    def __repr__(self) -> str:
        return f"InMemory({self.source!r}, n={len(self.items)})"


def collate(items: list[dict]) -> dict:
    """DataLoader collate: stack ``"image"`` into [B, 3, H, W]; every other key becomes a list."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch = {key: [item[key] for item in items] for key in items[0]}
    batch["image"] = torch.stack(batch["image"])
    return batch
