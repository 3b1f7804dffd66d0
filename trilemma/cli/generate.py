"""``trilemma generate``: text prompts -> a grid of images through a generator's pipeline."""

from __future__ import annotations

import argparse

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
    p.add_argument("--out", default="samples.png")
    options.add_device(p)


def run(args: argparse.Namespace) -> None:
    from trilemma.images import save_grid
    from trilemma.pipeline import Pipeline

    sampling = options.sampling(args, seed=args.seed)  # checked before any work
    check_writable_file(args.out)
    dev = options.device(args)
    pipe = Pipeline.load(args.generator, args.tokenizer, args.decoder).to(dev)
    prompts = [p for p in args.prompts for _ in range(args.n)]
    images = pipe(prompts, sampling, batch_size=args.batch_size)
    save_grid(images, args.out, captions=prompts)
    print(f"wrote {len(images)} images to {args.out}")
