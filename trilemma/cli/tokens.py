"""``trilemma tokenize``, ``trilemma reconstruct`` and ``trilemma import``: a tokenizer on image files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from trilemma import checkpoint
from trilemma.cli import options
from trilemma.cli.options import command, group, positive_int
from trilemma.files import check_writable_file
from trilemma.images import save_grid
from trilemma.metrics.scores import psnr
from trilemma.tokenizers.diffusers_files import SUPPORTED
from trilemma.tokenizers.interop import import_diffusers


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "tokenize", "encode images to a tokens file", run_tokenize)
    p.add_argument("images", nargs="+")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint or run directory")
    p.add_argument("--out", default="tokens.safetensors")
    options.add_size(p)
    options.add_prompt(p)
    options.add_device(p)

    p = command(sub, "reconstruct", "encode and decode images; write original | reconstruction", run_reconstruct)
    p.add_argument("images", nargs="+")
    options.add_tokenizer(p)
    p.add_argument("--out", default="reconstruction.png")
    options.add_size(p)
    options.add_prompt(p, several_budgets=True)
    options.add_device(p)

    imports = group(sub, "import", "import pretrained weights from another project (local files only)", "import_command")
    p = command(imports, "diffusers", f"a local diffusers autoencoder directory ({', '.join(SUPPORTED)})", run_import,
                aliases=["diffusers-vq"])
    p.add_argument("path", help="the model directory (config.json + weights) or a pipeline directory with vae/ or vqvae/")
    p.add_argument("--image-size", type=positive_int, default=256)
    p.add_argument("--sample", action="store_true", help="encode draws from the posterior instead of its mean (KL VAEs)")
    p.add_argument("--decoder", help="a ConsistencyDecoderVAE directory that decodes in place of an AutoencoderKL's decoder")
    p.add_argument("--pixel-range", type=_pixel_range, help="LOW,HIGH: the pixels the model takes (default: -1,1; 0,1 for aMUSEd)")
    p.add_argument("--out", required=True)


@torch.no_grad()
def run_tokenize(args: argparse.Namespace) -> None:
    tok, images, dev = _inputs(args)
    tokens = _encode(tok, images.to(dev), args).to("cpu")
    tokens.meta.update({"files": [str(p) for p in args.images], "image_size": tok.image_size})
    tokens.save(args.out, spec=tok.spec)
    spec = tok.spec
    per_image = tokens.tokens_per_image().float().mean().item()
    print(f"{len(images)} images -> {args.out}")
    print(f"tokens per image: {per_image:g} ({spec.kind}" + (f", grid {spec.grid[0]}x{spec.grid[1]}" if spec.grid else "") + ")")
    if tokens.mask is not None:
        print("tokens per image, each: " + " ".join(str(int(k)) for k in tokens.tokens_per_image()))
    if spec.discrete:
        print(f"bits per image: {per_image * spec.bits_per_token:g} (log2 {spec.vocab_size} x {spec.levels} per token)")
        used = torch.unique(tokens.ids).numel()
        print(f"codebook usage: {used}/{spec.vocab_size} codes ({100 * used / spec.vocab_size:.1f}%) in these images")
    else:
        print(f"continuous latents: {spec.latent_dim} floats per token ({per_image * spec.latent_dim:g} per image)")


@torch.no_grad()
def run_reconstruct(args: argparse.Namespace) -> None:
    tok, images, dev = _inputs(args)
    if args.budgets:
        if args.budget is not None:
            raise ValueError("give --budget or --budgets, not both")
        rows = {f"k={k}": tok.decode(tok.encode(images.to(dev), options.prompt(args, budget=k))).clamp(-1, 1).float().cpu()
                for k in args.budgets}
    else:
        rows = {"reconstruction": tok.decode(_encode(tok, images.to(dev), args)).clamp(-1, 1).float().cpu()}
    columns = [images, *rows.values()]
    grid = torch.stack(columns, 1).flatten(0, 1)  # per image: original, then each reconstruction
    names = ["original", *rows]
    save_grid(grid, args.out, nrow=len(columns), captions=names * len(images))
    for i, path in enumerate(args.images):
        print(f"{path}: " + ", ".join(f"{'' if len(rows) == 1 else name + ' '}PSNR {psnr(r[i:i + 1], images[i:i + 1]).item():.2f} dB"
                                      for name, r in rows.items()))
    print(f"wrote {' | '.join(names)} for each image to {args.out}")


def _inputs(args: argparse.Namespace) -> tuple[Any, torch.Tensor, torch.device]:
    """The tokenizer (on --device) and the image files at its size; the output path and the prompt
    are checked first, so a bad one costs nothing."""
    check_writable_file(args.out, "--out")
    options.prompt(args)
    dev = options.device(args)
    tok = options.load_tokenizer(args, dev)
    return tok, options.load_images(args.images, tok.image_size), dev


def _encode(tok, images: torch.Tensor, args: argparse.Namespace):
    """--budget auto: the fewest tokens reaching --target-psnr per image; else the prompt's budget."""
    prompt = options.prompt(args)
    if args.budget == "auto":
        if not getattr(tok, "promptable", False):
            raise ValueError("--budget auto needs a promptable tokenizer (e.g. promptable-shapes)")
        return tok.encode_to_quality(images, args.target_psnr, prompt)
    return tok.encode(images, prompt)


def _pixel_range(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH such as -1,1 or 0,1, got {text!r}") from None
    return lo, hi


def run_import(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists():  # an import never replaces a run or a file
        raise FileExistsError(f"--out {out} already exists; choose a new path for the imported tokenizer")
    model = import_diffusers(args.path, image_size=args.image_size, pixel_range=args.pixel_range, sample=args.sample,
                             decoder=args.decoder)
    extra = {"imported_from": str(args.path)} | ({"decoder_from": str(args.decoder)} if args.decoder else {})
    checkpoint.save(model, out, extra=extra)
    spec = model.spec
    what = f"{spec.vocab_size} codes" if spec.discrete else f"{spec.latent_dim} channels ({spec.max_tokens * spec.latent_dim} floats per image)"
    print(f"imported {args.path} -> {args.out}: {spec.grid[0]}x{spec.grid[1]} tokens, {what}")
