"""``trilemma list`` (what the registry holds) and ``trilemma data preview`` (a look at a dataset)."""

from __future__ import annotations

import argparse

import torch

from trilemma import registry
from trilemma.cli import options
from trilemma.cli.options import command, group, positive_int, seed
from trilemma.data import load_dataset
from trilemma.images import save_grid


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "list", "list registered tokenizers, generators, quantizers or presets", run_list)
    p.add_argument("what", choices=["tokenizers", "generators", "quantizers", "presets"])
    data = group(sub, "data", "look at a dataset", "data_command")
    p = command(data, "preview", "write an image grid with captions", run_preview)
    p.add_argument("dataset", help="'shapes' or a directory of images")
    p.add_argument("--n", type=positive_int, default=16, help="images in the grid")
    p.add_argument("--size", type=positive_int, default=32, help="image size")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", default="preview.png")


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
