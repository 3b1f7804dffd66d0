"""The ``trilemma`` command line. Thin: it parses, calls library functions and prints.

Errors print one line (``error: ...``) and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from trilemma import registry


def _add_train_args(p: argparse.ArgumentParser, steps: int, batch: int, lr: float) -> None:
    p.add_argument("--data", default="shapes", help="'shapes' or a directory of images (default: shapes)")
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: min(100, steps/10))")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights (0 = off)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (quantizers, losses stay fp32)")
    p.add_argument("--eval-every", type=int, default=None, help="default: steps/4")
    p.add_argument("--save-every", type=int, default=None, help="default: steps/4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--out", required=True, help="run directory (checkpoint in OUT/model)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. --set channels=32 --set quantizer.codebook_size=512 (JSON values)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trilemma",
        description="Image tokenizers and the generative transformers that run on their tokens.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list registered tokenizers, generators, quantizers or presets")
    p.add_argument("what", choices=["tokenizers", "generators", "quantizers", "presets"])

    p = sub.add_parser("data", help="look at a dataset")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    pp = dsub.add_parser("preview", help="write an image grid with captions")
    pp.add_argument("dataset", help="'shapes' or a directory of images")
    pp.add_argument("--n", type=int, default=16)
    pp.add_argument("--size", type=int, default=32)
    pp.add_argument("--split", default="train", choices=["train", "val", "test"])
    pp.add_argument("--seed", type=int, default=0)
    pp.add_argument("--out", default="preview.png")

    p = sub.add_parser("train", help="train a tokenizer or a generator")
    tsub = p.add_subparsers(dest="train_command", required=True, metavar="WHAT")
    tp = tsub.add_parser("tokenizer", help="train a tokenizer preset on shapes or a folder of images")
    tp.add_argument("--preset", required=True, choices=registry.preset_names("tokenizer"), metavar="PRESET",
                    help="one of: " + ", ".join(registry.preset_names("tokenizer")))
    tp.add_argument("--size", type=int, default=None, help="image size (default: the preset's)")
    tp.add_argument("--perceptual", type=float, default=0.0, help="LPIPS weight (needs backbone weights on disk)")
    tp.add_argument("--gan", type=float, default=0.0, help="adversarial weight (PatchGAN, hinge)")
    tp.add_argument("--gan-start", type=int, default=None, help="step the GAN switches on (default steps/2)")
    _add_train_args(tp, steps=2000, batch=32, lr=4e-4)

    gp = tsub.add_parser("generator", help="train a text-to-image generator on a tokenizer's tokens")
    gp.add_argument("--kind", required=True, choices=registry.names("generator"))
    gp.add_argument("--preset", default=None, help="generator preset (default KIND-shapes): "
                    + ", ".join(registry.preset_names("generator")))
    gp.add_argument("--tokenizer", required=True, help="tokenizer checkpoint or run directory")
    gp.add_argument("--num-images", type=int, default=20000, help="training images, tokenized once and cached")
    gp.add_argument("--text-length", type=int, default=None,
                    help="text positions, eos included (default: the longest training caption + eos, at most 64); "
                         "longer prompts are truncated, with a notice")
    _add_train_args(gp, steps=3000, batch=64, lr=5e-4)

    p = sub.add_parser("generate", help="generate images from text prompts")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--generator", required=True, help="generator checkpoint or run directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the one the generator recorded)")
    p.add_argument("--n", type=int, default=16, help="images per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance (1 = none)")
    p.add_argument("--steps", type=int, default=None, help="decoding steps (masked / diffusion generators)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default="samples.png")

    p = sub.add_parser("demo", help="the main job: train, generate and evaluate end to end on shapes")
    p.add_argument("--quick", action="store_true", help="a ~2 minute version (used in tests)")
    p.add_argument("--out", default="runs/demo")

    p = sub.add_parser("eval", help="evaluate tokenizers and generators (metrics, trade-off report)")
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="WHAT")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", default="shapes", help="'shapes' or a directory of images (default: shapes)")
    common.add_argument("--n", type=int, default=1000, help="held-out images to evaluate on (default 1000)")
    common.add_argument("--features", default="auto", choices=["auto", "domain", "inception", "none"],
                        help="FID features: auto = domain probe on shapes, Inception on a folder")
    common.add_argument("--probe-cache", default=None, help="where the shapes probe is cached (default OUT/probe)")
    common.add_argument("--batch-size", type=int, default=64)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--out", default="runs/eval", help="output directory (default runs/eval)")
    ep = esub.add_parser("reconstruction", parents=[common], help="PSNR, SSIM, LPIPS, rFID, usage, bits of one tokenizer")
    ep.add_argument("--tokenizer", required=True, help="tokenizer checkpoint or run directory")
    ep.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    ep = esub.add_parser("generation", parents=[common], help="FID/KID/precision-recall with floors, prompt adherence")
    ep.add_argument("--generator", required=True, help="generator checkpoint or run directory")
    ep.add_argument("--tokenizer", default=None, help="tokenizer (default: the one the generator recorded)")
    ep.add_argument("--temperature", type=float, default=1.0)
    ep.add_argument("--top-k", type=int, default=None)
    ep.add_argument("--top-p", type=float, default=None)
    ep.add_argument("--cfg-scale", type=float, nargs="+", default=[1.0], metavar="SCALE",
                    help="classifier-free guidance (1 = none); several values are each evaluated, side by side")
    ep.add_argument("--steps", type=int, default=None, help="decoding steps (masked / diffusion generators)")
    ep = esub.add_parser("tradeoff", parents=[common], help="sweep tokenizers: table + PSNR/rFID-vs-bits plots")
    ep.add_argument("--tokenizers", nargs="+", required=True, metavar="DIR", help="tokenizer checkpoints or run directories")
    ep.add_argument("--size", type=int, default=None, help="image size (default: the one the tokenizers share)")
    ep.add_argument("--no-lpips", action="store_true", help="skip LPIPS")

    p = sub.add_parser("tokenize", help="encode images to a tokens file")
    p.add_argument("images", nargs="+")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint or run directory")
    p.add_argument("--out", default="tokens.safetensors")

    p = sub.add_parser("reconstruct", help="encode and decode images; write original | reconstruction")
    p.add_argument("images", nargs="+")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint or run directory")
    p.add_argument("--out", default="reconstruction.png")

    p = sub.add_parser("import", help="import pretrained weights from another project (local files only)")
    isub = p.add_subparsers(dest="import_command", required=True, metavar="FORMAT")
    ip = isub.add_parser("diffusers-vq", help="a local diffusers VQModel directory (e.g. aMUSEd's VQ-GAN)")
    ip.add_argument("path")
    ip.add_argument("--image-size", type=int, default=256)
    ip.add_argument("--out", required=True)
    return parser


def _cmd_list(args: argparse.Namespace) -> None:
    if args.what == "presets":
        for kind in ("tokenizer", "generator"):
            for name in registry.preset_names(kind):
                print(name)
        return
    for name in registry.names(args.what[:-1]):
        print(name)


def _cmd_data(args: argparse.Namespace) -> None:
    from trilemma.data import load_dataset
    from trilemma.images import save_grid
    import torch

    ds = load_dataset(args.dataset, split=args.split, size=args.size, seed=args.seed)
    n = min(args.n, len(ds))
    items = [ds[i] for i in range(n)]
    save_grid(torch.stack([it["image"] for it in items]), args.out, captions=[it["caption"] for it in items])
    report = getattr(ds, "report", None)
    if callable(report) and report():
        print(report())
    print(f"wrote {n} images with captions to {args.out}")


def _cmd_train(args: argparse.Namespace) -> None:
    from trilemma import commands

    if args.train_command == "tokenizer":
        commands.train_tokenizer(args)
    else:
        commands.train_generator(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            _cmd_list(args)
        elif args.command == "data":
            _cmd_data(args)
        elif args.command == "train":
            _cmd_train(args)
        elif args.command == "eval":
            from trilemma import eval_commands

            getattr(eval_commands, args.eval_command + "_command")(args)
        else:
            from trilemma import commands

            getattr(commands, args.command.replace("-", "_") + "_command")(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for users; --debug for developers
        if args.debug:
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
