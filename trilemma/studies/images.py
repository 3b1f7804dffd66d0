"""The images a study is measured on, and the feature network it measures them in.

Features for rFID / FID (``features=``):
- ``"auto"``: ``"domain"`` on shapes, ``"inception"`` on a folder; a folder without the Inception
  weights is still evaluated, with rFID left empty and a notice saying why.
- ``"domain"``: the shapes probe's CNN (``trilemma.metrics.probe``), trained once in its run
  directory. Shapes only: a folder has no attributes to train it.
- ``"inception"``: the FID Inception-v3 from disk; missing weights are an error.
- ``None`` / ``"none"``: no rFID (fast).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from trilemma.data import load_dataset
from trilemma.metrics.features import InceptionFeatures
from trilemma.studies.scorers import shapes_probe

FEATURE_CHOICES = ("auto", "domain", "inception", "none")
SPLITS = ("test", "val", "train", "novel", "all")


def check_split(data: str, split: str) -> None:
    """``split`` is one of ``SPLITS`` and ``data`` has it: ``novel`` is shapes' (the compositions with
    a held-out colour x shape pair), ``all`` a folder's (every image)."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {', '.join(SPLITS)}, got {split!r}")
    if data == "shapes" and split == "all":
        raise ValueError("`split='all'` takes every image of a folder; shapes is generated per split: "
                         "use test, val, train or novel")
    if data != "shapes" and split == "novel":
        raise ValueError("`split='novel'` holds the shapes compositions with a held-out colour x shape pair; "
                         f"a folder ({data}) has none: use test, val, train or all")


def load_images(data: str, n: int, size: int, seed: int = 0, split: str = "test",
                progress: bool = True) -> tuple[torch.Tensor, list[dict]]:
    """The first ``n`` items of ``data``'s ``split`` (by default the held-out one): images
    [n, 3, size, size] and the items. ``split="all"``: every image of a folder (shapes has none);
    ``split="novel"``: shapes with a held-out colour x shape pair (a folder has none).

    A folder whose hash-based hold-out is empty (a handful of images) falls back to every image,
    with a notice: those include the tokenizer's training images, so scores are optimistic.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    check_split(data, split)
    if data == "shapes":
        ds = load_dataset("shapes", split=split, size=size, seed=seed, length=n)
    else:
        try:
            ds = load_dataset(data, split=split, size=size, seed=seed)
        except ValueError as err:
            if "split" not in str(err):
                raise
            print(f"notice: {data} has no held-out images; evaluating on all of them, "
                  "which likely includes training images")
            ds = load_dataset(data, split="all", size=size, seed=seed)
    count = min(n, len(ds))
    if count < n:
        print(f"notice: {data} has {count} held-out images (asked for {n})")
    items = [ds[i] for i in tqdm(range(count), desc="images", unit="img", disable=not progress)]
    report = getattr(ds, "report", None)
    if callable(report) and report():
        print(report())
    return torch.stack([it["image"] for it in items]), [dict(it, image=None) for it in items]


def resolve_features(features: str | None, data: str, size: int, seed: int = 0,
                     probe_cache: str | Path | None = None):
    """A FeatureExtractor for rFID / FID per the rules in the module docstring, or None."""
    choice = "none" if features is None else str(features).lower()
    if choice not in FEATURE_CHOICES:
        raise ValueError(f"unknown features {features!r}; choose one of {', '.join(FEATURE_CHOICES)}")
    if choice == "auto":
        choice = "domain" if data == "shapes" else "inception"
        if choice == "inception":
            try:
                return resolve_features("inception", data, size, seed, probe_cache)
            except FileNotFoundError as err:
                print(f"notice: no rFID/FID for {data}: {str(err).splitlines()[0]}")
                return None
    if choice == "none":
        return None
    if choice == "domain":
        if data != "shapes":
            raise ValueError("domain features are a probe trained on the shapes attributes; for a folder "
                             "use `features='inception'` (or `features='none'`)")
        if probe_cache is None:
            raise ValueError("domain features need a probe run directory (probe_cache=...)")
        return shapes_probe(probe_cache, size=size, seed=seed).features
    return InceptionFeatures()
