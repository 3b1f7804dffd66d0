"""How unseen the held-out splits are: duplicates shared between splits, measured.

The split rules make held-out items unseen by construction (shapes: a composition belongs to one
split, ``compositions.py``; folders: a file's content does, ``folder.py``). This measures what an
evaluation would actually meet: for each pair of splits, how many of the second split's items are
also in the first, as the same pixels (a hash of the decoded image tensor), the same caption
(non-empty), and the same composition (shapes) or the same file bytes (folders). A folder's copies
re-encoded (same pixels, other bytes) can still straddle splits: the pixel count shows them.

Folders are also checked for near duplicates (``near``): a resized, filtered, annotated or
re-encoded version of a picture has other pixels but nearly the same 32x32 luminance thumbnail;
two images whose thumbnails correlate at ``NEAR`` or more count as one (the Pearson correlation of
the thumbnails, so brightness and contrast changes do not hide a copy). ``folder_overlap`` runs the
same checks between two folders: is a folder kept for testing unseen by what trained on another?
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import Counter

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from trilemma.data.compositions import composition_key
from trilemma.data.folder import FolderDataset, assign_splits, content_digest
from trilemma.data.shapes import DEFAULT_LENGTH, SPLIT_IDS, ShapesDataset
from trilemma.images import ImageReadError

FOLDER_SPLITS = ("train", "val", "test")
NEAR = 0.9  # thumbnail correlation from which two images are near duplicates
THUMB = 32  # thumbnail side for near duplicates


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
        kinds = ("images", "captions", "files", "near")
    else:
        raise ValueError(f"unknown dataset {name!r}: expected 'shapes' or a directory of images")
    overlap = []
    for a, b in itertools.combinations(prints, 2):
        row = {"splits": [a, b], "measured": [splits[a]["measured"], splits[b]["measured"]]}
        for kind in kinds:
            shared = near_duplicates if kind == "near" else _same
            row[kind] = len(shared(prints[a][kind], prints[b][kind]))
        overlap.append(row)
    return {"dataset": name, "size": size, "seed": seed if name == "shapes" else None,
            "kinds": list(kinds), "splits": splits, "overlap": overlap}


def _image_digest(image) -> str:
    return hashlib.sha256(image.numpy().tobytes()).hexdigest()


def _same(reference: list, evaluated: list) -> list[int]:
    """Indices of ``evaluated`` keys equal to one of ``reference``'s (None matches nothing)."""
    seen = set(reference) - {None}
    return [j for j, key in enumerate(evaluated) if key is not None and key in seen]


def _pixel_prints(ds: FolderDataset, index: int) -> tuple[str | None, torch.Tensor | None]:
    """Item ``index``'s pixel digest and near-duplicate thumbnail; (None, None) when it cannot be read."""
    try:
        image = ds.load(index)["image"]
    except (ImageReadError, FileNotFoundError):
        return None, None
    return _image_digest(image), thumbnail(image)


def thumbnail(image: torch.Tensor) -> torch.Tensor:
    """The near-duplicate fingerprint of ``image`` [3, H, W]: its luminance at 32x32 (area
    resampling), zero mean and unit norm, flattened; zeros for a flat image."""
    luma = (image.float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    t = F.interpolate(luma[None], size=(THUMB, THUMB), mode="area" if luma.shape[-1] >= THUMB else "bilinear")
    t = t.flatten() - t.mean()
    norm = t.norm()
    return t / norm if norm > 1e-6 else torch.zeros_like(t)


def near_duplicates(reference: list[torch.Tensor | None], evaluated: list[torch.Tensor | None],
                    threshold: float = NEAR) -> list[tuple[int, int, float]]:
    """(index into ``evaluated``, index of its closest ``reference`` thumbnail, their correlation) for
    every evaluated thumbnail that correlates with a reference one at ``threshold`` or more,
    closest first; None entries (unreadable images) match nothing."""
    ref = [(i, t) for i, t in enumerate(reference) if t is not None]
    ev = [(j, t) for j, t in enumerate(evaluated) if t is not None]
    if not ref or not ev:
        return []
    refs = torch.stack([t for _, t in ref])
    found = []
    for start in range(0, len(ev), 1024):  # a block of correlations at a time
        chunk = ev[start:start + 1024]
        best, where = (torch.stack([t for _, t in chunk]) @ refs.T).max(1)
        found += [(j, ref[int(k)][0], float(c)) for (j, _), c, k in zip(chunk, best, where) if c >= threshold]
    return sorted(found, key=lambda hit: -hit[2])


def folder_overlap(reference: str, evaluated: str, size: int = 32, threshold: float = NEAR,
                   progress: bool = False) -> dict:
    """What the images of folder ``evaluated`` share with those of folder ``reference`` (every file
    of each, whatever its split): how many are the same file bytes, the same pixels at ``size``, or
    near duplicates (thumbnails correlating at ``threshold`` or more), and the near pairs
    themselves, closest first. Returns ``{"reference", "evaluated", "size", "threshold",
    "measured": [n_reference, n_evaluated], "unreadable": [..], "files", "images", "near",
    "pairs": [{"evaluated", "reference", "correlation"}]}`` (file paths relative to each folder)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"`threshold` must be in (0, 1], got {threshold}")
    for name, root in (("reference", reference), ("evaluated", evaluated)):
        if not os.path.isdir(str(root)):
            raise ValueError(f"`{name}` must be a directory of images, got {str(root)!r}")
    sides = {}
    for name, root in (("reference", reference), ("evaluated", evaluated)):
        ds = FolderDataset(root, size=size, split="all")
        keys = {"files": [], "images": [], "near": []}
        for i, rel in enumerate(tqdm(ds.files, desc=f"read {name}", unit="img", disable=not progress)):
            try:
                keys["files"].append(content_digest(ds.root / rel))
            except OSError:  # gone since it was listed
                keys["files"].append(None)
            for key, value in zip(("images", "near"), _pixel_prints(ds, i)):
                keys[key].append(value)
        sides[name] = (ds.files, keys)
    (ref_files, ref), (ev_files, ev) = sides["reference"], sides["evaluated"]
    counts = {kind: len(_same(ref[kind], ev[kind])) for kind in ("files", "images")}
    pairs = near_duplicates(ref["near"], ev["near"], threshold)
    return {"reference": str(reference), "evaluated": str(evaluated), "size": size, "threshold": threshold,
            "measured": [len(ref_files), len(ev_files)],
            "unreadable": [ref["images"].count(None), ev["images"].count(None)], **counts, "near": len(pairs),
            "pairs": [{"evaluated": ev_files[j], "reference": ref_files[i], "correlation": round(c, 4)}
                      for j, i, c in pairs]}


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
        keys = {"images": [], "captions": [], "files": [], "near": []}
        for rel in tqdm(measured, desc=f"decode {split}", unit="img", disable=not progress):
            for key, value in zip(("images", "near"), _pixel_prints(ds, index[rel])):
                keys[key].append(value)
            keys["captions"].append(ds.caption(rel) or None)  # an empty caption is no caption
            keys["files"].append(digests[rel])
        splits[split] = {"length": len(files), "measured": len(measured),
                         "unreadable": keys["images"].count(None)}
        prints[split] = keys
    return splits, prints
