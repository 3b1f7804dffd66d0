"""``trilemma list`` (what the registry holds), ``trilemma data preview`` (a look at a dataset) and
``trilemma data splits`` (each split's size and what the splits share) and ``trilemma data overlap``
(what a folder kept for testing shares with another)."""

from __future__ import annotations

import argparse

import torch

from trilemma import registry
from trilemma.cli import options
from trilemma.cli.options import command, group, positive_int, seed
from trilemma.data import folder_overlap, load_dataset, split_overlap
from trilemma.data.overlap import NEAR
from trilemma.images import save_grid


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "list", "list registered tokenizers, generators, quantizers or presets", run_list)
    p.add_argument("what", choices=["tokenizers", "generators", "quantizers", "presets"])
    data = group(sub, "data", "look at a dataset", "data_command")
    p = command(data, "preview", "write an image grid with captions", run_preview)
    p.add_argument("dataset", help="'shapes' or a directory of images")
    p.add_argument("--n", type=positive_int, default=16, help="images in the grid")
    p.add_argument("--size", type=positive_int, default=32, help="image size")
    p.add_argument("--split", default="train", choices=["train", "val", "test", "novel", "all"],
                   help="novel: shapes with a held-out colour x shape pair; all: every image of a folder")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", default="preview.png")
    p = command(data, "splits", "each split's size and the duplicates the splits share (images, captions, and "
                "shapes' compositions or a folder's file bytes and near duplicates)", run_splits)
    p.add_argument("dataset", help="'shapes' or a directory of images")
    p.add_argument("--n", type=positive_int, default=None,
                   help="measure the first N items of each split (default: all; shapes' train is 50k)")
    p.add_argument("--size", type=positive_int, default=32, help="image size")
    p.add_argument("--seed", type=seed, default=0, help="shapes' seed")
    p = command(data, "overlap", "what a folder's images share with another folder's: the same files, the same "
                "pixels, near duplicates (resized, filtered or annotated copies), each near pair listed", run_overlap)
    p.add_argument("evaluated", help="the folder you evaluate on (e.g. with --split all)")
    p.add_argument("--against", required=True, metavar="DIR", help="the folder a model trained on")
    p.add_argument("--threshold", type=float, default=NEAR,
                   help="32x32 luminance-thumbnail correlation from which two images are near duplicates")
    p.add_argument("--size", type=positive_int, default=32, help="image size the pixels are compared at")


def run_list(args: argparse.Namespace) -> None:
    if args.what == "presets":
        rows = [(name, registry.get_preset(kind, name)) for kind in ("tokenizer", "generator")
                for name in registry.preset_names(kind)]
        width = max(len(name) for name, _ in rows)
        for name, preset in rows:
            recipe = f" (trains with {options.recipe_flags(preset.recipe)})" if preset.recipe else ""
            print(f"{name:<{width}}  {preset.kind} {preset.model}: {preset.description}".rstrip(": ") + recipe)
        return
    for name in registry.names(args.what[:-1]):
        print(name)


def run_preview(args: argparse.Namespace) -> None:
    ds = load_dataset(args.dataset, split=args.split, size=args.size, seed=args.seed)
    n = min(args.n, len(ds))
    items = [ds[i] for i in range(n)]
    save_grid(torch.stack([it["image"] for it in items]), args.out, captions=[it["caption"] for it in items])
    report = getattr(ds, "report", None)
    if callable(report) and report():
        print(report())
    print(f"wrote {n} images with captions to {args.out}")


def run_splits(args: argparse.Namespace) -> None:
    r = split_overlap(args.dataset, n=args.n, size=args.size, seed=args.seed, progress=True)
    shapes = r["dataset"] == "shapes"
    print(f"{r['dataset']}: size {r['size']}" + (f", seed {r['seed']}" if shapes else ""))
    extra = ("objects 1/2/3", "novel pair") if shapes else ("unreadable",)
    rows = [("split", "length", "measured") + extra]
    for split, info in r["splits"].items():
        if shapes:
            objects = "/".join(str(info["objects"].get(str(k), 0)) for k in (1, 2, 3))
            cells = (objects, str(info["novel_pair_items"]))
        else:
            cells = (str(info["unreadable"]),)
        rows.append((split, str(info["length"]), str(info.get("measured", "-"))) + cells)
    _table(rows)
    print("shared: items of the second split equal to one of the first's (measured items only)")
    rows = [("splits",) + tuple(r["kinds"])]
    for o in r["overlap"]:
        rows.append((" / ".join(o["splits"]),) + tuple(f"{o[k]}/{o['measured'][1]}" for k in r["kinds"]))
    _table(rows)


def run_overlap(args: argparse.Namespace) -> None:
    r = folder_overlap(args.against, args.evaluated, size=args.size, threshold=args.threshold, progress=True)
    n_ref, n_ev = r["measured"]
    print(f"{r['evaluated']} ({n_ev} images, {r['unreadable'][1]} unreadable) against {r['reference']} ({n_ref} images)")
    _table([("shared", "images"), ("same file bytes", f"{r['files']}/{n_ev}"),
            (f"same pixels at {r['size']}x{r['size']}", f"{r['images']}/{n_ev}"),
            (f"near duplicates (thumbnail correlation >= {r['threshold']:g})", f"{r['near']}/{n_ev}")])
    for pair in r["pairs"]:
        print(f"  {pair['correlation']:.3f}  {pair['evaluated']}  ~  {pair['reference']}")


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
