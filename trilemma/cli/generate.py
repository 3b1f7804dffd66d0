"""``trilemma generate``: text prompts -> a grid of images through a generator's pipeline; and
``trilemma caption``, the other direction: images -> text through a generator that reads them."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from trilemma import checkpoint
from trilemma.cli import options
from trilemma.cli.options import command, positive_int, seed
from trilemma.files import atomic_write_bytes, check_writable_file
from trilemma.images import save_grid, save_image
from trilemma.pipeline import Pipeline, check_box
from trilemma.studies.scorers import rerank_scorer


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "generate", "generate images from text prompts", run)
    p.add_argument("prompts", nargs="+")
    p.add_argument("--generator", required=True, help="generator checkpoint or run directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the one the generator recorded)")
    p.add_argument("--decoder", default=None, help="decode through this token-conditioned decoder (trilemma train decoder)")
    p.add_argument("--n", type=positive_int, default=16, help="images per prompt")
    options.add_sampling(p)
    p.add_argument("--seed", type=seed, default=None, help="sampling seed (default: nondeterministic)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="prompts sampled at once")
    p.add_argument("--init", default=None, metavar="IMAGE", help="edit this image: with --box, draw that region anew "
                   "and keep the rest")
    p.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1", help="the region --init redraws (coordinates in [0, 1])")
    p.add_argument("--rerank", type=positive_int, default=1, metavar="N",
                   help="draw N candidates per image and keep the one a contrastive text-image model scores highest")
    p.add_argument("--scorer", default=None, metavar="DIR", help="the contrastive model for --rerank (default: "
                   "GENERATOR/contrastive, trained there on the generator's data when missing)")
    p.add_argument("--out", default="samples.png", help="the grid of every image, captioned")
    p.add_argument("--out-dir", default=None, help="also write each image as NNNN.png with NNNN.json (prompt, seed, "
                   "sampling settings, generator); refused when it already holds images")
    options.add_precision(p)
    options.add_compile(p)
    options.add_device(p)

    p = command(sub, "caption", "caption images with a generator trained in both orders (dalle, caption_share > 0)",
                run_caption)
    p.add_argument("images", nargs="+")
    p.add_argument("--generator", required=True, help="generator checkpoint or run directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the one the generator recorded)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely words")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    p.add_argument("--seed", type=seed, default=None, help="sampling seed (default: nondeterministic)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images captioned at once")
    p.add_argument("--out", default=None, metavar="CAPTIONS.jsonl", help="also write one JSON line per image (file, caption)")
    options.add_precision(p)
    options.add_device(p)


def run(args: argparse.Namespace) -> None:
    sampling = options.sampling(args, seed=args.seed)  # checked before any work
    check_writable_file(args.out, "--out")
    out_dir = Path(args.out_dir) if args.out_dir else None
    if out_dir is not None and (out_dir.is_file() or any(out_dir.glob("*.png"))):
        raise FileExistsError(f"--out-dir {out_dir} is a file or already holds images; choose a new directory")
    if (args.init is None) != (args.box is None):
        raise ValueError("--init and --box go together: the image to edit and the region to redraw")
    box = check_box(tuple(options.floats(args.box, 4, "--box", "x0,y0,x1,y1"))) if args.box else None
    dev = options.device(args)
    pipe = Pipeline.load(args.generator, args.tokenizer, args.decoder, precision=args.dtype, compile=args.compile).to(dev)
    known = None
    if args.init is not None:
        known = pipe.known_ids(options.load_images([args.init], pipe.tokenizer.image_size), box)
        if pipe.generator.registry_name in ("dalle", "parti"):
            print(f"note: {pipe.generator.registry_name} draws the box's tokens in raster order, each seeing the tokens "
                  "before it; the kept tokens after it are not seen while drawing (muse sees them all)")
    prompts = [p for p in args.prompts for _ in range(args.n)]
    if args.rerank > 1:
        scorer = _scorer(args, pipe.tokenizer.image_size)
        images, _ = pipe.best_of(prompts, args.rerank, scorer.to(dev), sampling, args.batch_size, known=known)
    else:
        images = pipe(prompts, sampling, batch_size=args.batch_size, known=known)
    save_grid(images, args.out, captions=prompts)
    print(f"wrote {len(images)} images to {args.out}")
    if out_dir is not None:
        _write_each(images, prompts, sampling, args, out_dir)


def run_caption(args: argparse.Namespace) -> list[str]:
    sampling = options.caption_sampling(args)
    if args.out is not None:
        check_writable_file(args.out, "--out")
    pipe = Pipeline.load(args.generator, args.tokenizer, precision=args.dtype).to(options.device(args))
    captions = pipe.caption(options.load_images(args.images, pipe.tokenizer.image_size), sampling, args.batch_size)
    for path, text in zip(args.images, captions):
        print(f"{path}\t{text}")
    if args.out is not None:
        lines = "".join(json.dumps({"file": path, "caption": text}) + "\n" for path, text in zip(args.images, captions))
        atomic_write_bytes(args.out, lines.encode())
        print(f"wrote {len(captions)} captions to {args.out}")
    return captions


def _scorer(args: argparse.Namespace, size: int):
    """The contrastive model that --rerank scores with: --scorer, or one kept beside the generator."""
    if args.scorer is not None:
        return checkpoint.load(checkpoint.resolve_checkpoint(args.scorer), kind="features")
    return rerank_scorer(args.generator, size)


def _write_each(images, prompts: list[str], sampling, args: argparse.Namespace, out_dir: Path) -> None:
    """One PNG per image and a JSON beside it saying how to make it again."""
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        chunk = i - i % args.batch_size  # the pipeline seeds each chunk with sampling.for_chunk(start)
        record = {"prompt": prompt, "index": i, "seed": sampling.for_chunk(chunk).seed, "batch_size": args.batch_size,
                  "sampling": dataclasses.asdict(sampling), "generator": str(args.generator),
                  "tokenizer": args.tokenizer, "decoder": args.decoder, "init": args.init, "box": args.box,
                  "rerank": args.rerank, "scorer": args.scorer, "dtype": args.dtype,
                  "compile": args.compile}
        save_image(image, out_dir / f"{i:04d}.png")
        atomic_write_bytes(out_dir / f"{i:04d}.json", (json.dumps(record, indent=2) + "\n").encode())
    print(f"wrote {len(images)} PNG + JSON pairs to {out_dir}")
