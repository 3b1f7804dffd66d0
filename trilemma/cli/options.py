"""What several command families share: the parser class, flag groups (training, sampling, device),
the conversions from parsed flags to the library's typed configs, and back: ``FLAGS``, the one table
that turns the library's names in its messages into flags (``in_flags``). Defaults come from those
configs (``TrainConfig``, ``SamplingConfig``), so each default is written once."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import warnings
from typing import Any, NoReturn

import torch

from trilemma import checkpoint, pipeline, registry
from trilemma.generators.sampling import SCHEDULERS, SamplingConfig
from trilemma.images import load_image
from trilemma.tokens import Prompt
from trilemma.training.loop import TrainConfig


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default (when it has help text and a default worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with defaults in --help and a one-line error for a command line that does not parse."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def command(sub: Any, name: str, help: str, func: Any, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand that runs ``func(args)``; ``--debug`` is accepted after it too."""
    p = sub.add_parser(name, help=help, description=help, **kwargs)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    p.set_defaults(func=func)
    return p


def group(sub: Any, name: str, help: str, dest: str) -> Any:
    """A command with subcommands of its own (``train``, ``eval``, ``data``, ``import``)."""
    p = sub.add_parser(name, help=help, description=help)
    return p.add_subparsers(dest=dest, required=True, metavar="WHAT")


# ----------------------------------------------------------------------------- library names -> flags

# The library's name of what a flag sets (a config field or a function argument) -> the flag; how messages
# mark those names, and how the CLI rewrites them: ``in_flags``.
FLAGS = {
    # TrainConfig (add_training) and LossConfig (train tokenizer)
    "steps": "--steps", "batch_size": "--batch-size", "grad_accum": "--grad-accum", "lr": "--lr",
    "warmup_steps": "--warmup", "ema_decay": "--ema", "eval_every": "--eval-every", "save_every": "--save-every",
    "seed": "--seed", "num_workers": "--workers", "random_crop": "--random-crop",
    "perceptual_weight": "--perceptual", "gan_weight": "--gan", "gan_start": "--gan-start",
    # SamplingConfig (add_sampling), named `sampling.FIELD` by ``sampling``: its steps are not training steps
    "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "cfg_scale": "--cfg-scale",
    "sampling.steps": "--sample-steps", "scheduler": "--scheduler", "budget": "--budget",
    # arguments of the training functions, the pipeline, checkpoint loading and the studies
    "out": "--out", "resume": "--resume", "tokenizer": "--tokenizer", "tokenizer_dir": "--tokenizer",
    "text_length": "--text-length", "box": "--box", "split": "--split", "features": "--features",
    "diagnostic_n": "--diagnostic-n", "pixel_range": "--pixel-range", "decoder": "--decoder", "sample": "--sample",
    "bits_step_images": "--bits-step-images", "precision": "--dtype", "compile": "--compile",
    "region": "--region", "threshold": "--threshold", "reference": "--against", "image_size": "--size",
}
_NAMED = re.compile(r"`(?P<name>[A-Za-z_][\w.]*)(?:=(?P<value>[^`]*))?`")


def in_flags(message: str) -> str:
    """A library message in the CLI's words: where ``main`` prints an error, library names become flags.

    The convention: outside the CLI, a message names a config field or function argument in
    backticks, alone or with a value: `lr`, `TrainConfig.lr`, `resume=True`, `split='all'`. Each one
    whose name is in ``FLAGS`` (a dotted name, else its last part) becomes its flag: --lr, --lr,
    --resume, --split all (``=True``, a switch: the flag alone; a quoted value loses its quotes).
    Only these marked names are rewritten, never a bare word (out in "output", a path, a caption);
    a marked name with no flag (`mixed_precision`) is left as written."""

    def flag(match: re.Match) -> str:
        name, value = match["name"], match["value"]
        flag = FLAGS.get(name) or FLAGS.get(name.rpartition(".")[2])
        if flag is None:
            return match[0]
        if value is None or value == "True":
            return flag
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        return f"{flag} {value}"

    return _NAMED.sub(flag, message)


# ----------------------------------------------------------------------------- value types


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def seed(text: str) -> int:
    value = _int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^63), got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


# ----------------------------------------------------------------------------- device


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, ... (auto: cuda when available, else cpu)")


def add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="the generator's sampling arithmetic (autocast; the tokenizer decodes in fp32)")


def add_compile(p: argparse.ArgumentParser) -> None:
    able = [n for n in registry.names("generator") if registry.model_class("generator", n).compiles]
    p.add_argument("--compile", action="store_true",
                   help=f"sample through torch.compile'd steps ({', '.join(able)}): the same images at fp32; "
                        "compiling takes seconds to a minute per batch shape, so it pays off only over many images")


def device(args: argparse.Namespace) -> torch.device:
    name = args.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return dev


# ----------------------------------------------------------------------------- training


def add_training(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """The training flags. --steps, --batch-size and --lr default to the preset's recipe
    (``Preset.recipe``, what it was measured with) where it has one, else to ``defaults``."""
    p.set_defaults(training_defaults=defaults)
    p.add_argument("--data", default="shapes", help="'shapes' or a directory of images")
    p.add_argument("--steps", type=positive_int, default=None, help=f"optimizer steps (default: the preset's recipe, else {defaults.steps})")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"images per process and micro-batch (default: the preset's recipe, else {defaults.batch_size})")
    p.add_argument("--grad-accum", type=positive_int, default=defaults.grad_accum, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate, warm-up then cosine decay (default: the preset's recipe, else {defaults.lr:g})")
    p.add_argument("--random-crop", type=float, default=None, metavar="FRACTION",
                   help="train on random square crops of a folder's images, each at least FRACTION of the shorter "
                        f"side (tokenizers; default: the preset's recipe, else {defaults.random_crop:g}: the centre crop)")
    p.add_argument("--warmup", type=positive_int, default=None, help="warm-up steps (default: min(100, steps/10))")
    p.add_argument("--ema", type=float, default=defaults.ema_decay, help="EMA decay of the saved weights (0 = off)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="bf16 autocast (quantizers, losses stay fp32)")
    precision.add_argument("--fp16", action="store_true", help="fp16 autocast with loss scaling (GPUs)")
    p.add_argument("--eval-every", type=positive_int, default=None, help="evaluate every N steps (default: steps/4)")
    p.add_argument("--save-every", type=positive_int, default=None, help="checkpoint every N steps (default: steps/4)")
    p.add_argument("--seed", type=seed, default=defaults.seed)
    p.add_argument("--workers", type=non_negative_int, default=defaults.num_workers, help="data loader worker processes")
    p.add_argument("--out", required=True, help="run directory (checkpoint in OUT/model)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. --set channels=32 --set quantizer.codebook_size=512 (JSON values)")


def training(args: argparse.Namespace, recipe: dict | None = None) -> TrainConfig:
    """The flags as a TrainConfig: --steps / --batch-size / --lr where given, else ``recipe``'s (the
    preset's), else the command's defaults. Without --bf16 / --fp16, mixed precision is what
    `accelerate launch` / `accelerate config` chose."""
    flags = {name: getattr(args, name) for name in registry.RECIPE_FIELDS}
    taken = {name: value for name, value in (recipe or {}).items() if flags[name] is None}
    settings = {name: getattr(args.training_defaults, name) for name in flags}
    settings.update(taken, **{name: value for name, value in flags.items() if value is not None})
    if taken:
        print(f"from the preset's recipe: {recipe_flags(taken)}")
    return TrainConfig(
        **settings, grad_accum=args.grad_accum, warmup_steps=args.warmup, ema_decay=args.ema,
        mixed_precision="bf16" if args.bf16 else "fp16" if args.fp16 else None,
        eval_every=args.eval_every, save_every=args.save_every, seed=args.seed, num_workers=args.workers,
    )


def recipe_flags(recipe: dict) -> str:
    """A preset's recipe as the flags it stands for: {"lr": 2e-3} -> "--lr 0.002"."""
    return " ".join(f"{FLAGS[name]} {value:g}" for name, value in recipe.items())


def overrides(pairs: list[str]) -> dict:
    """["channels=32", "quantizer.codebook_size=512"] -> {"channels": 32, "quantizer": {"codebook_size": 512}}."""
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


# ----------------------------------------------------------------------------- sampling

def add_sampling(p: argparse.ArgumentParser, several_scales: bool = False) -> None:
    d = _defaults(SamplingConfig)
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=d.top_k, help="keep the k most likely ids")
    p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling mass")
    if several_scales:
        p.add_argument("--cfg-scale", type=float, nargs="+", default=[d.cfg_scale], metavar="SCALE",
                       help="classifier-free guidance (1 = none); several values are each evaluated, side by side")
    else:
        p.add_argument("--cfg-scale", type=float, default=d.cfg_scale, help="classifier-free guidance (1 = none)")
    p.add_argument("--sample-steps", type=int, default=d.steps,
                   help="decoding passes of masked / diffusion generators (default: the generator's own)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=d.scheduler,
                   help="diffusion sampler (default: the generator's own)")
    p.add_argument("--budget", type=positive_int, default=d.budget, metavar="K",
                   help="autoregressive generators on a promptable tokenizer: decode the first K generated tokens")


def _defaults(cls: type) -> argparse.Namespace:
    """A dataclass's field defaults, without building (and so validating) an instance."""
    return argparse.Namespace(**{f.name: f.default for f in dataclasses.fields(cls)})


def sampling(args: argparse.Namespace, seed: int | None, cfg_scale: float | None = None) -> SamplingConfig:
    """The one ``SamplingConfig`` of a command, validated here; an error names the field as
    `sampling.FIELD` (its first word is the field), which ``main`` prints as the flag."""
    try:
        return SamplingConfig(
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            cfg_scale=args.cfg_scale if cfg_scale is None else cfg_scale, seed=seed, steps=args.sample_steps,
            scheduler=args.scheduler, budget=args.budget,
        )
    except ValueError as err:
        field, _, rest = str(err).partition(" ")
        raise ValueError(f"`sampling.{field.strip('`')}` {rest}") from None


def caption_sampling(args: argparse.Namespace) -> SamplingConfig:
    """The ``SamplingConfig`` of a captioning command: its --temperature and --seed, and --top-k /
    --top-p where it has them (captioning takes no guidance, steps or budget)."""
    return sampling(argparse.Namespace(temperature=args.temperature, top_k=getattr(args, "top_k", None),
                                       top_p=getattr(args, "top_p", None), cfg_scale=1.0, sample_steps=None,
                                       scheduler=None, budget=None), seed=args.seed)


# ----------------------------------------------------------------------------- images


def load_images(paths: list[str], size: int) -> torch.Tensor:
    """Image files -> [N, 3, size, size] in [-1, 1]; resize notices are printed, one per file."""
    images = []
    for path in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images.append(load_image(path, size=size))
        for w in caught:
            print(f"notice: {w.message}")
    return torch.stack(images)


def add_prompt(p: argparse.ArgumentParser, several_budgets: bool = False) -> None:
    """Prompts for a promptable tokenizer: how many tokens, and where to spend them."""
    p.add_argument("--budget", default=None, metavar="K|auto",
                   help="tokens per image (promptable tokenizers), or 'auto' with --target-psnr (default: all)")
    p.add_argument("--target-psnr", type=float, default=None, metavar="DB",
                   help="with --budget auto: per image, the fewest tokens whose reconstruction reaches this PSNR")
    if several_budgets:
        p.add_argument("--budgets", type=positive_int, nargs="+", default=None, metavar="K",
                       help="reconstruct at each budget: one row per budget")
    p.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1", help="spend the tokens on this region (coordinates in [0, 1])")
    p.add_argument("--point", action="append", default=[], metavar="X,Y", help="a point in the region of interest (repeatable)")


def prompt(args: argparse.Namespace, budget: int | None = None) -> Any:
    """The Prompt of --budget / --box / --point (None when none is given); errors name the flag."""
    if args.budget not in (None, "auto") and budget is None:
        try:
            budget = int(args.budget)
        except ValueError:
            raise ValueError(f"--budget must be an integer or 'auto', got {args.budget!r}") from None
    if args.budget == "auto" and args.target_psnr is None:
        raise ValueError("--budget auto needs --target-psnr DB")
    if args.target_psnr is not None and args.budget != "auto":
        raise ValueError("--target-psnr goes with --budget auto")
    boxes = torch.tensor([[floats(args.box, 4, "--box", "x0,y0,x1,y1")]]) if args.box else None
    points = torch.tensor([[floats(p, 2, "--point", "x,y") for p in args.point]]) if args.point else None
    if budget is None and boxes is None and points is None:
        return None
    return Prompt(budget=budget, boxes=boxes, points=points)


def floats(text: str, n: int, flag: str, form: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        raise ValueError(f"{flag} expects {form} (numbers in [0, 1]), got {text!r}")
    return values


def add_tokenizer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint or run directory (default: the decoder's)")
    p.add_argument("--decoder", default=None, help="decode through this token-conditioned decoder instead of the "
                   "tokenizer's own (trilemma train decoder)")


def add_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=positive_int, default=None,
                   help="run a convolutional tokenizer (vqvae, patch, imported diffusers) at this image size "
                        "(default: the size it was trained at)")


def load_tokenizer(args: argparse.Namespace, dev: torch.device | None = None) -> Any:
    """--tokenizer, decoding through --decoder when given (then --tokenizer defaults to the decoder's)."""
    decoder = getattr(args, "decoder", None)
    if args.tokenizer is None and decoder is None:
        raise ValueError("--tokenizer is required (or --decoder, whose tokenizer is recorded)")
    tok_dir = args.tokenizer if decoder is None else checkpoint.recorded_tokenizer(
        checkpoint.resolve_checkpoint(decoder), args.tokenizer, kind="decoder")
    tok = pipeline.load_tokenizer(tok_dir, decoder, image_size=getattr(args, "size", None))
    return tok.to(dev) if dev is not None else tok
