"""How unseen the held-out splits are: exact duplicates shared between splits, measured.

The split rules make held-out items unseen by construction (shapes: a composition belongs to one
split, ``compositions.py``; folders: a file's content does, ``folder.py``). This measures what an
evaluation would actually meet: for each pair of splits, how many of the second split's items are
also in the first, as the same pixels (a hash of the decoded image tensor), the same caption
(non-empty), and the same composition (shapes) or the same file bytes (folders). A folder's copies
re-encoded (same pixels, other bytes) can still straddle splits: the pixel count shows them.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import Counter

from tqdm.auto import tqdm

from trilemma.data.compositions import composition_key
from trilemma.data.folder import FolderDataset, assign_splits, content_digest
from trilemma.data.shapes import DEFAULT_LENGTH, SPLIT_IDS, ShapesDataset
from trilemma.images import ImageReadError

FOLDER_SPLITS = ("train", "val", "test")


def split_overlap(data: str, n: int | None = None, size: int = 32, seed: int = 0,
                  progress: bool = False) -> dict:
    """Each split's size and what its items share with every earlier split.

    ``data``: "shapes" or a directory of images. ``n``: measure the first ``n`` items of each split
    (default: all of them; shapes' train stream is 50k). Returns ``{"dataset", "size", "seed",
    "kinds", "splits": {split: {"length", "measured", ...}}, "overlap": [{"splits": [a, b],
    "measured": [n_a, n_b], kind: count, ...}]}``, where a count is how many of the first ``n_b``
    items of ``b`` equal one of the first ``n_a`` of ``a`` in that kind. Shapes splits also report
    ``objects`` (measured items by object count) and ``novel_pair_items``; folder splits
    ``unreadable`` (measured files that did not decode), beside ``"all"``: ``{"length",
    "unreadable"}`` (files that could not be read to hash).
    """
    if n is not None and n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    name = str(data)
    if name == "shapes":
        splits, prints = _shapes(n, size, seed, progress)
        kinds = ("images", "captions", "compositions")
    elif os.path.isdir(name):
        splits, prints = _folder(name, n, size, progress)
        kinds = ("images", "captions", "files")
    else:
        raise ValueError(f"unknown dataset {name!r}: expected 'shapes' or a directory of images")
    overlap = []
    for a, b in itertools.combinations(prints, 2):
        row = {"splits": [a, b], "measured": [splits[a]["measured"], splits[b]["measured"]]}
        for kind in kinds:
            seen = set(prints[a][kind]) - {None}
            row[kind] = sum(key is not None and key in seen for key in prints[b][kind])
        overlap.append(row)
    return {"dataset": name, "size": size, "seed": seed if name == "shapes" else None,
            "kinds": list(kinds), "splits": splits, "overlap": overlap}


def _image_digest(image) -> str:
    return hashlib.sha256(image.numpy().tobytes()).hexdigest()


def _shapes(n: int | None, size: int, seed: int, progress: bool) -> tuple[dict, dict]:
    splits, prints = {}, {}
    for split in SPLIT_IDS:
        ds = ShapesDataset(split, size=size, seed=seed)
        m = DEFAULT_LENGTH[split] if n is None else min(n, len(ds))
        keys = {"images": [], "captions": [], "compositions": []}
        objects, novel = Counter(), 0
        for i in tqdm(range(m), desc=f"shapes {split}", unit="img", disable=not progress):
            item = ds[i]
            keys["images"].append(_image_digest(item["image"]))
            keys["captions"].append(item["caption"])
            keys["compositions"].append(composition_key(item["attributes"]))
            objects[len(item["attributes"])] += 1
            novel += bool(item["novel_pairs"])
        splits[split] = {"length": len(ds), "measured": m,
                         "objects": {str(k): objects[k] for k in sorted(objects)},
                         "novel_pair_items": novel}
        prints[split] = keys
    return splits, prints


def _folder(root: str, n: int | None, size: int, progress: bool) -> tuple[dict, dict]:
    ds = FolderDataset(root, size=size, split="all")
    digests, unhashed = {}, set()
    for rel in tqdm(ds.files, desc="hash files", unit="file", disable=not progress):
        try:
            digests[rel] = content_digest(ds.root / rel)
        except OSError:
            unhashed.add(rel)
    assigned = assign_splits(digests)
    index = {rel: i for i, rel in enumerate(ds.files)}
    splits, prints = {"all": {"length": len(ds.files), "unreadable": len(unhashed)}}, {}
    for split in FOLDER_SPLITS:
        files = [rel for rel in ds.files if assigned.get(rel) == split]
        measured = files if n is None else files[:n]
        keys = {"images": [], "captions": [], "files": []}
        for rel in tqdm(measured, desc=f"decode {split}", unit="img", disable=not progress):
            try:
                keys["images"].append(_image_digest(ds.load(index[rel])["image"]))
            except (ImageReadError, FileNotFoundError):
                keys["images"].append(None)
            keys["captions"].append(ds.caption(rel) or None)  # an empty caption is no caption
            keys["files"].append(digests[rel])
        splits[split] = {"length": len(files), "measured": len(measured),
                         "unreadable": keys["images"].count(None)}
        prints[split] = keys
    return splits, prints
