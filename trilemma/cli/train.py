"""``trilemma train tokenizer`` and ``trilemma train generator``."""

from __future__ import annotations

import argparse
from pathlib import Path

from trilemma import registry
from trilemma.cli import options
from trilemma.cli.options import command, group, non_negative_int, positive_int
from trilemma.tokenizers.losses import LossConfig
from trilemma.training import decoder as decoder_training
from trilemma.training import generator as generator_training
from trilemma.training import tokenizer as tokenizer_training


def add_parsers(sub: argparse._SubParsersAction) -> None:
    train = group(sub, "train", "train a tokenizer or a generator", "train_command")
    p = command(train, "tokenizer", "train a tokenizer preset on shapes or a folder of images", run_tokenizer)
    p.add_argument("--preset", required=True, choices=registry.preset_names("tokenizer"), metavar="PRESET",
                   help="one of: " + ", ".join(registry.preset_names("tokenizer")))
    p.add_argument("--size", type=positive_int, default=None, help="image size (default: the preset's)")
    p.add_argument("--perceptual", type=float, default=0.0, help="LPIPS weight (needs backbone weights on disk)")
    p.add_argument("--gan", type=float, default=0.0, help="adversarial weight (PatchGAN, hinge)")
    p.add_argument("--gan-start", type=non_negative_int, default=None, help="step the GAN switches on (default: steps/2)")
    options.add_training(p, tokenizer_training.DEFAULTS)

    p = command(train, "generator", "train a text-to-image generator on a tokenizer's tokens", run_generator)
    p.add_argument("--kind", required=True, choices=registry.names("generator"))
    p.add_argument("--preset", default=None, help="generator preset (default: KIND-shapes); one of "
                   + ", ".join(registry.preset_names("generator")))
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint or run directory")
    p.add_argument("--num-images", type=positive_int, default=generator_training.NUM_IMAGES,
                   help="training images, tokenized once and cached")
    p.add_argument("--text-length", type=positive_int, default=None,
                   help="text positions, eos included (default: the longest training caption + eos, at most "
                        f"{generator_training.AUTO_TEXT_LENGTH_MAX}); longer prompts are truncated, with a notice")
    p.add_argument("--budget", type=positive_int, default=None, metavar="K",
                   help="on a promptable tokenizer: model its first K ordered tokens (default: all)")
    options.add_training(p, generator_training.DEFAULTS)

    p = command(train, "decoder", "train a diffusion decoder on a discrete tokenizer's tokens (replaces its decoder)",
                run_decoder)
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint or run directory (discrete)")
    p.add_argument("--preset", default="token-diffusion-shapes", choices=registry.preset_names("decoder"), metavar="PRESET",
                   help="one of: " + ", ".join(registry.preset_names("decoder")))
    options.add_training(p, decoder_training.DEFAULTS)


def run_tokenizer(args: argparse.Namespace) -> dict:
    cfg = options.training(args, _recipe("tokenizer", args.preset))
    loss = LossConfig(perceptual_weight=args.perceptual, gan_weight=args.gan,
                      gan_start=args.gan_start if args.gan_start is not None else cfg.steps // 2)
    result = tokenizer_training.train_tokenizer(args.preset, args.data, Path(args.out), cfg, loss, size=args.size,
                                                resume=args.resume, overrides=options.overrides(args.set))
    print(f"tokenizer checkpoint: {result['checkpoint']} (step {result['step']})")
    if result["eval"]:
        print("held-out: " + ", ".join(f"{k} {v:.4g}" for k, v in result["eval"].items()))
    return result


def run_generator(args: argparse.Namespace) -> dict:
    recipe = _recipe("generator", args.preset or generator_training.default_preset(args.kind))
    result = generator_training.train_generator(
        args.kind, args.tokenizer, args.data, Path(args.out), options.training(args, recipe), preset=args.preset,
        num_images=args.num_images, text_length=args.text_length, resume=args.resume, budget=args.budget,
        overrides=options.overrides(args.set),
    )
    print(f"generator checkpoint: {result['checkpoint']} (step {result['step']}), samples in {Path(args.out) / 'samples'}")
    return result


def run_decoder(args: argparse.Namespace) -> dict:
    cfg = options.training(args, _recipe("decoder", args.preset))
    result = decoder_training.train_decoder(args.tokenizer, args.data, Path(args.out), cfg, preset=args.preset,
                                            resume=args.resume, overrides=options.overrides(args.set))
    print(f"decoder checkpoint: {result['checkpoint']} (step {result['step']}); use it with --decoder {args.out}")
    if result["eval"]:
        print("held-out: " + ", ".join(f"{k} {v:.4g}" for k, v in result["eval"].items()))
    return result


def _recipe(kind: str, preset: str) -> dict:
    """The preset's training recipe; {} for a name the training function will refuse with its own error."""
    return registry.get_preset(kind, preset).recipe if preset in registry.preset_names(kind) else {}
