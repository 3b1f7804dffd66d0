"""What the CLI's subcommands do, as plain functions over parsed arguments (the CLI stays a parser)."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from trilemma import checkpoint
from trilemma.train import TrainConfig, resolve_checkpoint


def parse_overrides(pairs: list[str]) -> dict:
    """["channels=32", "quantizer.codebook_size=512"] -> {"channels": 32, "quantizer": {"codebook_size": 512}}."""
    import json

    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # bare strings need no quotes
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def train_config(args: argparse.Namespace) -> TrainConfig:
    steps = args.steps
    quarter = max(1, steps // 4)
    return TrainConfig(
        steps=steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        warmup_steps=args.warmup if args.warmup is not None else min(100, max(1, steps // 10)),
        ema_decay=args.ema, mixed_precision="bf16" if args.bf16 else "no",
        eval_every=args.eval_every or quarter, save_every=args.save_every or quarter,
        seed=args.seed, num_workers=args.workers,
    )


def train_tokenizer(args: argparse.Namespace) -> dict:
    from trilemma.tokenizer_training import train_tokenizer as run
    from trilemma.tokenizers.losses import LossConfig

    cfg = train_config(args)
    loss = LossConfig(
        perceptual_weight=args.perceptual, gan_weight=args.gan,
        gan_start=args.gan_start if args.gan_start is not None else cfg.steps // 2,
    )
    result = run(args.preset, args.data, Path(args.out), cfg, loss, size=args.size, resume=args.resume,
                 overrides=parse_overrides(args.set))
    print(f"tokenizer checkpoint: {result['checkpoint']} (step {result['step']})")
    if result["eval"]:
        print("held-out: " + ", ".join(f"{k} {v:.4g}" for k, v in result["eval"].items()))
    return result


def load_tokenizer(path: str | Path):
    from trilemma.tokenizers.base import Tokenizer

    ckpt = resolve_checkpoint(path)
    model = checkpoint.load(ckpt, kind="tokenizer")
    assert isinstance(model, Tokenizer)
    return model


def _load_images(paths: list[str], size: int) -> torch.Tensor:
    from trilemma.images import load_image

    images = []
    for p in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images.append(load_image(p, size=size))
        for w in caught:
            print(f"notice: {w.message}")
    return torch.stack(images)


def tokenize_command(args: argparse.Namespace) -> None:
    tok = load_tokenizer(args.tokenizer)
    images = _load_images(args.images, tok.image_size)
    tokens = tok.encode(images)
    tokens.meta.update({"files": [str(p) for p in args.images], "image_size": tok.image_size})
    tokens.save(args.out, spec=tok.spec)
    spec = tok.spec
    per_image = tokens.tokens_per_image().float().mean().item()
    print(f"{len(images)} images -> {args.out}")
    print(f"tokens per image: {per_image:g} ({spec.kind}" + (f", grid {spec.grid[0]}x{spec.grid[1]}" if spec.grid else "") + ")")
    if spec.discrete:
        print(f"bits per image: {per_image * spec.bits_per_token:g} (log2 {spec.vocab_size} x {spec.levels} per token)")
        used = torch.unique(tokens.ids).numel()
        print(f"codebook usage: {used}/{spec.vocab_size} codes ({100 * used / spec.vocab_size:.1f}%) in these images")
    else:
        print(f"continuous latents: {spec.latent_dim} floats per token ({per_image * spec.latent_dim:g} per image)")


def reconstruct_command(args: argparse.Namespace) -> None:
    from trilemma.images import save_grid, side_by_side
    from trilemma.eval.metrics import psnr

    tok = load_tokenizer(args.tokenizer)
    images = _load_images(args.images, tok.image_size)
    recon = tok.reconstruct(images)
    save_grid(side_by_side(images, recon), args.out, nrow=min(8, 2 * len(images)))
    for path, value in zip(args.images, psnr(recon, images).tolist()):
        print(f"{path}: PSNR {value:.2f} dB")
    print(f"wrote original | reconstruction pairs to {args.out}")


def import_command(args: argparse.Namespace) -> None:
    from trilemma.tokenizers.interop import import_diffusers_vq

    model = import_diffusers_vq(args.path, image_size=args.image_size)
    checkpoint.save(model, Path(args.out), extra={"imported_from": str(args.path)})
    spec = model.spec
    print(f"imported {args.path} -> {args.out}: {spec.grid[0]}x{spec.grid[1]} tokens, {spec.vocab_size} codes")



def train_generator(args: argparse.Namespace) -> dict:
    from trilemma.generator_training import train_generator as run

    result = run(
        args.kind, args.tokenizer, args.data, Path(args.out), train_config(args), preset=args.preset,
        num_images=args.num_images, text_length=args.text_length, resume=args.resume, **parse_overrides(args.set),
    )
    print(f"generator checkpoint: {result['checkpoint']} (step {result['step']}), samples in {Path(args.out) / 'samples'}")
    return result


def generate_command(args: argparse.Namespace) -> None:
    from trilemma.images import save_grid
    from trilemma.pipeline import Pipeline

    pipe = Pipeline.load(args.generator, args.tokenizer)
    prompts = [p for p in args.prompts for _ in range(args.n)]
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg_scale, seed=args.seed)
    if args.steps is not None:
        sampling["steps"] = args.steps
    pipe.generator.sampling_config(**sampling)  # validate before any work
    images = pipe(prompts, **sampling)
    save_grid(images, args.out, captions=prompts)
    print(f"wrote {len(images)} images to {args.out}")


def demo_command(args: argparse.Namespace) -> None:
    from trilemma.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
