"""The real side of a generation evaluation, per category of prompts, and its protocol stated.

A *category* is a set of prompts with two disjoint sets of real images: the ``floor`` (one real
image per prompt: the prompts are its captions) and the ``reference``. Generated images and the
floor answer the same prompts, so a perfect generator scores the floor (FID's real-vs-real floor,
``generation.py``); prompts taken from the reference would pair each generated image with its
reference twin and push FID below the floor. Shapes splits its world by composition
(``trilemma.data.compositions``), so three categories ask three questions:

- ``unseen`` (the headline): the val split's captions, scored against test images; no training
  image shows any of these compositions;
- ``novel``: captions showing a held-out colour x shape pair (red triangle, green cross, blue
  circle) that train, val and test never show (CLEVR-CoGenT's systematic split): does a generator
  compose a colour and a shape it has only seen apart? The floor and the reference are two
  disjoint sets of novel items;
- ``train``: the train split's first items (the ones every generator trains on first), against
  other training items: the memorisation diagnostic (far better here than on unseen prompts means
  captions learnt, not the grammar).

A folder has one category: prompts and floor from val, reference from test, the contrastive scorer
trained on train only. The adherence *ceiling* of a category is its scorer on the floor's real
images: what a perfect generator scores, and how well the scorer itself reads those prompts (the
probe trains on train compositions; on novel pairs it may read worse).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trilemma.data import load_dataset, split_of, split_overlap
from trilemma.metrics.features import FeatureExtractor, extract
from trilemma.studies.images import check_split, load_images, resolve_features
from trilemma.studies.scorers import contrastive_scorer, shapes_probe, trained_on

R_PRECISION_CANDIDATES = 32  # captions ranked per image (own + 31 others), as is common practice
HEADLINE = "unseen"


@dataclass
class Category:
    """One prompt set: its ``prompts``, the ``floor`` (one real image per prompt, whose captions they
    are) and the ``reference`` (real images disjoint from the floor), as images [N, 3, H, W] or
    their features [N, dim]; ``attributes`` per prompt for the shapes probe; ``novel_pairs`` per
    prompt (the held-out pairs it shows) for a per-pair breakdown; ``ceiling``: the adherence
    scorer on the floor images, once measured (``Benchmark.with_ceilings``)."""

    prompts: list[str]
    reference: torch.Tensor
    floor: torch.Tensor
    attributes: list | None = None
    novel_pairs: list[list[str]] | None = None
    ceiling: dict | None = None


@dataclass
class Benchmark:
    """Every category (the first is the headline), the feature network, the adherence scorer (the
    shapes probe, or a contrastive model) and the ``protocol``: how each set was drawn and what was
    measured of it (``benchmark``). ``prompts`` / ``reference`` / ``floor`` / ``attributes`` are the
    headline's."""

    categories: dict[str, Category]
    features: FeatureExtractor | None
    probe: Any = None
    contrastive: Any = None
    protocol: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.categories:
            raise ValueError("a benchmark needs at least one category of prompts")

    @property
    def headline(self) -> str:
        """The headline category's name: the first."""
        return next(iter(self.categories))

    prompts = property(lambda self: self.categories[self.headline].prompts)
    reference = property(lambda self: self.categories[self.headline].reference)
    floor = property(lambda self: self.categories[self.headline].floor)
    attributes = property(lambda self: self.categories[self.headline].attributes)

    def with_ceilings(self, batch_size: int = 64) -> Benchmark:
        """Each category's ceiling measured, once, while its floor is images."""
        if self.probe is None and self.contrastive is None:
            return self
        cats = {name: cat if cat.ceiling is not None or cat.floor.ndim != 4 else dataclasses.replace(
                    cat, ceiling=adherence_scores(cat.floor, cat, self.probe, self.contrastive, batch_size))
                for name, cat in self.categories.items()}  # fmt: skip
        return dataclasses.replace(self, categories=cats)

    def precompute(self, batch_size: int = 64) -> Benchmark:
        """The ceilings measured, then the real sets' features extracted once (for several
        evaluations on the same benchmark)."""
        bench = self.with_ceilings(batch_size)
        if self.features is None:
            return bench

        def feats(x: torch.Tensor) -> torch.Tensor:
            return x if x.ndim == 2 else extract(self.features, x, batch_size=batch_size)

        cats = {name: dataclasses.replace(cat, reference=feats(cat.reference), floor=feats(cat.floor))
                for name, cat in bench.categories.items()}
        return dataclasses.replace(bench, categories=cats)


def adherence_scores(images: torch.Tensor, category: Category, probe=None, contrastive=None,
                     batch_size: int = 64) -> dict:
    """``images`` (one per ``category.prompts``) read by the scorers: ``adherence_*`` (the probe),
    ``clip_score`` and ``r_precision`` (a contrastive model), and with novel pairs ``by_novel_pair``:
    per pair, the probe's accuracies on that pair's objects only, in the images prompted with it
    (``image_acc`` is left out there: the images' other objects are not scored)."""
    out = {}
    if probe is not None:
        out.update({f"adherence_{k}": v for k, v in probe.score(images, category.attributes, batch_size=batch_size).items()})
        if category.novel_pairs and any(category.novel_pairs):
            out["by_novel_pair"] = {}
            for pair in sorted({p for pairs in category.novel_pairs for p in pairs}):
                idx = [i for i, pairs in enumerate(category.novel_pairs) if pair in pairs]
                objects = [[o for o in category.attributes[i] if f"{o['color']} {o['shape']}" == pair] for i in idx]
                scores = probe.score(images[idx], objects, batch_size=batch_size)
                out["by_novel_pair"][pair] = {"images": len(idx), **{f"adherence_{k}": v for k, v in scores.items()
                                                                     if k != "image_acc"}}
    if contrastive is not None:
        n = len(category.prompts)
        out["clip_score"] = contrastive.clip_score(images, category.prompts, batch_size=batch_size)
        out["r_precision"] = (contrastive.r_precision(images, category.prompts, candidates=min(R_PRECISION_CANDIDATES, n))
                              if n >= 2 else None)  # ranking needs another caption
    return out


def category_splits(data: str, split: str, diagnostic: bool = True) -> dict[str, tuple[str, str]]:
    """Category -> (floor and prompts' split, reference's split), the headline first. ``split`` is
    the headline's reference: ``test`` (floor val) or ``val`` (floor test) make it ``unseen``;
    ``novel`` or ``train`` make that category the headline (floor and reference two disjoint sets
    of it); ``all`` (a folder kept for testing) halves the folder. Shapes adds the other categories
    when ``diagnostic``."""
    check_split(data, split)
    if split in ("test", "val"):
        head = {HEADLINE: ("test" if split == "val" else "val", split)}
    else:
        head = {split: (split, split)}
    if data != "shapes" or not diagnostic:
        return head
    rest = {HEADLINE: ("val", "test"), "novel": ("novel", "novel"), "train": ("train", "train")}
    return {**head, **{k: v for k, v in rest.items() if k not in head}}


def folder_contrastive(data: str, size: int, seed: int, cache_dir: str | Path) -> tuple[Path, Any]:
    """The contrastive text-image model that scores a folder: trained on its train split only, once
    per folder and size (the run ``cache_dir/contrastive-KEY``); its run and the model."""
    train = load_dataset(data, split="train", size=size, seed=seed)
    key = hashlib.sha256(repr(train).encode()).hexdigest()[:12]
    run = Path(cache_dir) / f"contrastive-{key}"
    return run, contrastive_scorer(run, train, seed=seed)


def benchmark(data: str, n: int, size: int, seed: int = 0, features: str = "auto", cache_dir: str | Path = "runs/eval",
              probe_dir: str | Path | None = None, probe_steps: int | None = None, split: str = "test",
              probe_data: Any = None, diagnostic_n: int | None = None) -> Benchmark:
    """The generation-evaluation protocol, shared by ``trilemma eval generation`` and the demo.

    The headline category (``category_splits``: by default ``unseen``, prompts from val, reference
    test) has ``n`` prompts and ``n`` reference images; on shapes, ``novel`` and ``train`` have
    ``diagnostic_n`` prompts each (default a third of ``n``, rounded up; 0: the headline alone)
    and ``n`` reference images. Adherence: on shapes the probe (the run ``probe_dir``, default
    ``cache_dir/probe``; also the ``auto`` / ``domain`` features; ``probe_data``: its training
    items, default the train split); on a folder a contrastive text-image model trained on its
    train split only (the run ``cache_dir/contrastive-KEY``, one per folder and size). Each
    category's ceiling is measured here; ``Benchmark.protocol`` states the sets and the measured
    overlap with the train split.
    """
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    m = math.ceil(n / 3) if diagnostic_n is None else diagnostic_n
    if m < 0:
        raise ValueError(f"`diagnostic_n` must be >= 0, got {diagnostic_n}")
    shapes = data == "shapes"
    cache_dir = Path(cache_dir)
    probe_dir = Path(probe_dir) if probe_dir is not None else cache_dir / "probe"
    categories, about = {}, {}
    for i, (name, (floor_split, reference_split)) in enumerate(category_splits(data, split, m > 0).items()):
        floor, floor_items, reference, reference_items = _real_sets(data, floor_split, reference_split,
                                                                    n if i == 0 else m, n, size, seed)
        categories[name] = Category([it["caption"] for it in floor_items], reference, floor,
                                    [it["attributes"] for it in floor_items] if shapes else None,
                                    [it["novel_pairs"] for it in floor_items] if name == "novel" else None)
        about[name] = _category_protocol(floor_split, reference_split, floor_items, reference_items)
    if shapes:
        probe = shapes_probe(probe_dir, size=size, seed=seed, dataset=probe_data,
                             **({} if probe_steps is None else {"steps": probe_steps}))
        choice = (features or "none").lower()
        extractor = probe.features if choice in ("auto", "domain") else resolve_features(choice, data, size, seed)
        scorer, bench = f"the shapes probe ({probe_dir}), trained on {trained_on(probe_dir)}", \
            Benchmark(categories, extractor, probe=probe)
    else:
        extractor = resolve_features(features, data, size, seed, probe_dir)
        run, contrastive = folder_contrastive(data, size, seed, cache_dir)
        bench = Benchmark(categories, extractor, contrastive=contrastive)
        scorer = f"a contrastive text-image model ({run}), trained on {trained_on(run)}"
        if split != "all":
            _folder_overlap(data, size, about)
    bench.protocol = {
        "data": str(data), "image_size": size, "seed": seed, "headline": bench.headline,
        "features": "none" if extractor is None else f"{features} ({type(extractor).__name__}, {extractor.dim}-d)",
        "adherence": scorer,
        "floor": ("FID / KID / precision / recall between a category's floor (one real image per prompt: the prompts are "
                  "its captions) and its reference, two disjoint real sets, in the same features: a perfect generator "
                  "scores the floor (`*_floor`)"),
        "ceiling": "the adherence scorer on each category's floor images (`*_ceiling`): what a perfect generator scores",
        "categories": about,
    }
    return bench.with_ceilings()


def _real_sets(data: str, floor_split: str, reference_split: str, n_floor: int, n_reference: int, size: int,
               seed: int) -> tuple[torch.Tensor, list[dict], torch.Tensor, list[dict]]:
    """(floor, its items, reference, its items): two splits, or two disjoint sets of one split."""
    if floor_split != reference_split:
        floor, floor_items = load_images(data, n_floor, size, seed=seed, split=floor_split)
        reference, reference_items = load_images(data, n_reference, size, seed=seed, split=reference_split)
    elif data == "shapes":  # one stream: the floor first (the train split's first items are trained on), then the reference
        images, items = load_images(data, n_floor + n_reference, size, seed=seed, split=floor_split)
        floor, floor_items, reference, reference_items = images[:n_floor], items[:n_floor], images[n_floor:], items[n_floor:]
    else:  # a folder lists its files by path (alike ones together): odd ones the floor, even ones the reference
        images, items = load_images(data, 2 * max(n_floor, n_reference), size, seed=seed, split=floor_split)
        half = len(images) // 2
        floor, floor_items = images[1 : 2 * half : 2][:n_floor], items[1 : 2 * half : 2][:n_floor]
        reference, reference_items = images[0 : 2 * half : 2][:n_reference], items[0 : 2 * half : 2][:n_reference]
        print(f"notice: split={floor_split!r}: {len(reference)} of its images are the reference and "
              f"{len(floor)} others the floor")
    shared = {it.get("path") for it in floor_items} & {it.get("path") for it in reference_items} - {None}
    if shared:  # a folder without held-out images falls back to all of them (load_images) in both sets
        raise ValueError(f"{data}: the floor and the reference share {len(shared)} images (e.g. {min(shared)}); "
                         "the floor needs two disjoint real sets: add images or use `split='all'`")
    return floor, floor_items, reference, reference_items


def _category_protocol(floor_split: str, reference_split: str, floor_items: list[dict],
                       reference_items: list[dict]) -> dict:
    """The roles' splits and sizes; on shapes, measured on the items: the split each prompt's and
    each reference image's composition belongs to, how many prompts show a composition of the
    train split, and the prompts per novel pair."""
    same = floor_split == reference_split
    about = {"prompts": {"split": floor_split, "count": len(floor_items), "from": "the floor images' captions"},
             "floor": {"split": floor_split, "images": len(floor_items)},
             "reference": {"split": reference_split, "images": len(reference_items),
                           **({"from": "other items of the split than the floor's"} if same else {})}}
    if floor_items and floor_items[0].get("attributes") is not None:
        prompt_splits = Counter(split_of(it["attributes"]) for it in floor_items)
        about["prompt_compositions"] = dict(sorted(prompt_splits.items()))
        reference_splits = Counter(split_of(it["attributes"]) for it in reference_items)
        about["reference_compositions"] = dict(sorted(reference_splits.items()))
        about["prompts_in_train"] = {"compositions": prompt_splits.get("train", 0), "measured": len(floor_items)}
        about["reference_in_train"] = {"compositions": reference_splits.get("train", 0), "measured": len(reference_items)}
        pairs = Counter(p for it in floor_items for p in it.get("novel_pairs", []))
        if pairs:
            about["novel_pair_prompts"] = dict(sorted(pairs.items()))
    return about


def _folder_overlap(data: str, size: int, about: dict) -> None:
    """A folder's measured overlap (``split_overlap`` over its whole splits): for each category, how
    many of its prompts' (floor) and reference split's images, captions and files are in train."""
    rows = {tuple(row["splits"]): row for row in split_overlap(data, size=size)["overlap"]}
    for cat in about.values():
        for role in ("prompts", "reference"):
            split = cat[role]["split"]
            if split != "train":  # the train split's own images are in train, by definition
                cat[f"{role}_in_train"] = {k: v for k, v in rows[("train", split)].items() if k != "splits"}


def protocol_lines(protocol: dict) -> list[str]:
    """``Benchmark.protocol`` (or an evaluation's ``protocol``) in Markdown: what every category
    shares, then one table row per category: its sets and their measured overlap with train."""
    if "categories" not in protocol:
        return ["Protocol: not stated (a benchmark built by hand, not by `benchmark`)."]
    seeds = f"data seed {protocol['seed']}" + (f", sampling seed {protocol['sampling_seed']}"
                                                if protocol.get("sampling_seed") is not None else "")
    size = protocol["image_size"]
    lines = [(f"Protocol: {protocol['data']} at {size}x{size}, {seeds}; features: {protocol['features']}; "
              f"adherence: {protocol['adherence']}."), "",
             f"Floor: {protocol['floor']}. Ceiling: {protocol['ceiling']}.", "",
             ("| category | prompts (the floor's captions; one image each) | reference | prompts in train (measured) | "
              "reference in train (measured) |"), "|---|---|---|---|---|"]
    for name, cat in protocol["categories"].items():
        prompts, ref = cat["prompts"], cat["reference"]
        pairs = cat.get("novel_pair_prompts")
        lines.append(
            f"| {name}{' (headline)' if name == protocol['headline'] else ''} | {prompts['count']} {prompts['split']}"
            + (f" ({', '.join(f'{p} {k}' for p, k in pairs.items())})" if pairs else "")
            + f" | {ref['images']} {ref['split']}{' (other items)' if ref.get('from') else ''} | "
            f"{_in_train(cat, 'prompts')} | {_in_train(cat, 'reference')} |")
    return lines


def _in_train(cat: dict, role: str) -> str:
    found = cat.get(f"{role}_in_train")
    if found is None:
        return "- (the train split)" if cat[role]["split"] == "train" else "not measured"
    if "compositions" in found:
        return f"{found['compositions']} of {found['measured']} compositions"
    train, here = found["measured"]
    return ", ".join(f"{kind} {found[kind]}" for kind in ("images", "captions", "files") if kind in found) + \
        f" (of all {here}, against all {train} of train)"
