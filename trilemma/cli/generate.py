"""``trilemma generate``: text prompts -> a grid of images through a generator's pipeline."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from trilemma.cli import options
from trilemma.cli.options import command, positive_int, seed
from trilemma.files import check_writable_file


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
    p.add_argument("--out", default="samples.png", help="the grid of every image, captioned")
    p.add_argument("--out-dir", default=None, help="also write each image as NNNN.png with NNNN.json (prompt, seed, "
                   "sampling settings, generator); refused when it already holds images")
    options.add_device(p)


def run(args: argparse.Namespace) -> None:
    from trilemma.images import save_grid
    from trilemma.pipeline import Pipeline

    sampling = options.sampling(args, seed=args.seed)  # checked before any work
    check_writable_file(args.out)
    out_dir = Path(args.out_dir) if args.out_dir else None
    if out_dir is not None and (out_dir.is_file() or any(out_dir.glob("*.png"))):
        raise FileExistsError(f"--out-dir {out_dir} is a file or already holds images; choose a new directory")
    dev = options.device(args)
    pipe = Pipeline.load(args.generator, args.tokenizer, args.decoder).to(dev)
    prompts = [p for p in args.prompts for _ in range(args.n)]
    images = pipe(prompts, sampling, batch_size=args.batch_size)
    save_grid(images, args.out, captions=prompts)
    print(f"wrote {len(images)} images to {args.out}")
    if out_dir is not None:
        _write_each(images, prompts, sampling, args, out_dir)


def _write_each(images, prompts: list[str], sampling, args: argparse.Namespace, out_dir: Path) -> None:
    """One PNG per image and a JSON beside it saying how to make it again."""
    from trilemma.files import atomic_write_bytes
    from trilemma.images import save_image

    for i, (image, prompt) in enumerate(zip(images, prompts)):
        chunk = i - i % args.batch_size  # the pipeline seeds each chunk with sampling.for_chunk(start)
        record = {"prompt": prompt, "index": i, "seed": sampling.for_chunk(chunk).seed, "batch_size": args.batch_size,
                  "sampling": dataclasses.asdict(sampling), "generator": str(args.generator),
                  "tokenizer": args.tokenizer, "decoder": args.decoder}
        save_image(image, out_dir / f"{i:04d}.png")
        atomic_write_bytes(out_dir / f"{i:04d}.json", (json.dumps(record, indent=2) + "\n").encode())
    print(f"wrote {len(images)} PNG + JSON pairs to {out_dir}")
