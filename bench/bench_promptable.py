"""The promptable tokenizer on held-out images: PSNR against the budget k, the cost of ordering
(the same network trained without tail dropout), a fixed tokenizer at the same bits, the region
study (``region_study``: the prompt told to neither half, the encoder only, the decoder only, both;
at the same total bits, the prompt's bits counted: ~30 a box, ~16 a point), and --budget auto.

    .venv/bin/python bench/bench_promptable.py --tokenizer TOK_DIR [--data shapes|FOLDER] [--split val|test] \
        [--unordered FLAT_DIR] [--fixed VQ_DIR] [--n 500] [--target-psnr 25] [--seed 0] [--prompts-per-image P] \
        [--region-share S]

TOK_DIR is a trained promptable tokenizer, FLAT_DIR the same preset trained with
``--set tail_dropout=false``, VQ_DIR a fixed tokenizer at about the same bits per image. --region-share
measures TOK_DIR with its config's ``region_share`` set to S (encode / decode only: the weights are
the same), a prompted budget split between the region at its own scale and the whole image. Beside
the random boxes it reports one colour's worth (``colour_reference``: inside each box its exact mean
colour against the image's), the reference for k = 1, whose 9 bits say little more than a colour,
and the whole image's exact block colours on 1x1 ... 8x8 grids (``block_colours``: 24 ... 1536 bits),
a floor for the budget curve.

Knobs are tuned on val (the default, the first --n images of the split); a tuned tokenizer's
numbers are reported once, with --split test. A folder's split is its hash-based hold-out, centre
crops (``studies.images.load_images``). Prompts drawn without looking at the image, seeded by
--seed: random boxes of the sizes the tokenizer trained on (``random_boxes``) and random foreground
points (``random_points``, the region a disc of ``POINT_RADIUS``), which say whether a gain needs the
prompt on an object; each image is repeated with --prompts-per-image distinct draws (default 1 on
shapes, 4 on a folder, whose hold-out is small). On shapes the headline box is each image's first
object's grid cell (shapes draws objects in a 3x3 grid) and --budget auto is broken down by objects;
a folder has no objects, so its headline is the random boxes. Writes bench/results/promptable.json
(shapes, test), promptable-val.json (shapes, val) or promptable-FOLDERNAME-SPLIT.json, the data,
split, images, prompts per image and seed recorded in it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from trilemma import checkpoint  # noqa: E402
from trilemma.metrics.prompted import (  # noqa: E402
    first_object_boxes,
    quantize_boxes,
    random_boxes,
    random_points,
    reconstruct,
    region_study,
)
from trilemma.metrics.scores import psnr  # noqa: E402
from trilemma.studies.images import load_images  # noqa: E402
from trilemma.studies.tradeoff import budget_sweep  # noqa: E402
from trilemma.tokenizers.prompts import box_mask  # noqa: E402
from trilemma.tokens import Prompt  # noqa: E402


PSNR_CAP = 10 * math.log10(4.0 / 1e-6)  # an MSE floored at 1e-6 (66 dB): a flat box is said exactly by its colour


def colour_reference(images: torch.Tensor, boxes: torch.Tensor) -> dict[str, float]:
    """What one colour says, in dB inside / outside each box: the box's exact mean colour against
    the image's (a single token can say little more than a colour: k = 1's reference). Per-image
    PSNR, capped at ``PSNR_CAP``."""
    inside = box_mask(Prompt(boxes=quantize_boxes(boxes)), len(images), images.shape[-1], images.device)

    def score(fill: torch.Tensor, mask: torch.Tensor) -> float:
        return psnr(fill.expand_as(images), images, mask=mask).clamp(max=PSNR_CAP).mean().item()

    box_colour = (images * inside).sum((2, 3), keepdim=True) / inside.sum((2, 3), keepdim=True).clamp_min(1)
    image_colour = images.mean((2, 3), keepdim=True)
    return {"in_box_box_colour": score(box_colour, inside), "in_box_image_colour": score(image_colour, inside),
            "outside_box_colour": score(box_colour, 1 - inside), "outside_image_colour": score(image_colour, 1 - inside)}


def block_colours(images: torch.Tensor, grids: tuple[int, ...] = (1, 2, 4, 8)) -> dict[str, dict[str, float]]:
    """What exact colours say of the whole image: each image as a g x g grid of its block means, for
    each g of ``grids``, in dB, with the bits those colours take at 8 a channel (a floor any
    tokenizer's budget curve should clear at fewer bits)."""
    out = {}
    for g in grids:
        blocks = nn.functional.interpolate(nn.functional.adaptive_avg_pool2d(images, g), size=images.shape[-2:], mode="nearest")
        out[f"{g}x{g}"] = {"bits": 24 * g * g, "psnr": psnr(blocks, images).mean().item()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--data", default="shapes", help="'shapes' or a directory of images")
    ap.add_argument("--split", choices=("val", "test"), default="val",
                    help="val: tune on it (default); test: report a tuned tokenizer, once")
    ap.add_argument("--unordered", default=None, help="the same preset trained with --set tail_dropout=false")
    ap.add_argument("--fixed", default=None, help="a fixed tokenizer at about the same bits per image")
    ap.add_argument("--n", type=int, default=500, help="images (at most; a folder's split may hold fewer)")
    ap.add_argument("--target-psnr", type=float, default=25.0)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random boxes and points")
    ap.add_argument("--prompts-per-image", type=int, default=None,
                    help="random prompts per image, each image repeated (default: 1 on shapes, 4 on a folder)")
    ap.add_argument("--region-share", type=float, default=None,
                    help="measure TOK_DIR with region_share set to this (0: the learned prompt paths alone)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    load = lambda d: checkpoint.load(checkpoint.resolve_checkpoint(d), kind="tokenizer")  # noqa: E731
    tok = load(args.tokenizer)
    if args.region_share is not None:
        if not 0 <= args.region_share <= 1:
            ap.error(f"--region-share must be in [0, 1], got {args.region_share}")
        tok.config = dataclasses.replace(tok.config, region_share=args.region_share)
    shapes = args.data == "shapes"
    images, items = load_images(args.data, args.n, tok.image_size, split=args.split, progress=False)
    per_image = args.prompts_per_image or (1 if shapes else 4)
    budgets = budget_sweep(tok)
    bits = tok.spec.bits_per_token
    print(f"{args.data}, {args.split}: {len(images)} images x {per_image} random prompts each (distinct draws, "
          f"seed {args.seed})", flush=True)

    # The region study at every budget (the target reads k <= K/4): the large ones show how far a
    # region can rise, the ceiling the small budgets climb towards.
    repeated = images.repeat_interleave(per_image, 0)
    sides = tuple(tok.config.box_sides)
    drawn = {"random_boxes": {"boxes": random_boxes(len(repeated), seed=args.seed, sizes=sides)},
             "random_points": {"points": random_points(len(repeated), seed=args.seed)}}
    extra: dict = {"tokenizer": args.tokenizer, "region_share": tok.config.region_share, "data": args.data,
                   "split": args.split, "n": len(images), "prompts_per_image": per_image, "seed": args.seed,
                   "bits_per_token": bits, "box_sides": list(sides)}
    for name, prompt in drawn.items():
        extra[name] = {"seed": args.seed, "prompts_per_image": per_image,
                       "rows": region_study(tok, repeated, **prompt, budgets=budgets)}
        for row in extra[name]["rows"]:
            print(name.replace("_", " "), row, flush=True)
    extra["colour_reference"] = colour_reference(repeated, drawn["random_boxes"]["boxes"])
    print("random boxes, one exact colour:", extra["colour_reference"], flush=True)
    extra["block_colours"] = block_colours(images)
    print("the whole image as exact block colours:", extra["block_colours"], flush=True)
    if shapes:
        rows = region_study(tok, images, first_object_boxes(items), budgets)
        extra["boxes"] = "the first object's grid cell"
        for row in rows:
            print(row, flush=True)
    else:
        rows = extra["random_boxes"]["rows"]
        extra["boxes"] = f"random boxes, sides {sides[0]:g}-{sides[1]:g} (the rows of random_boxes)"

    for name, path in (("unordered", args.unordered), ("fixed", args.fixed)):
        if path:
            other = load(path)
            extra[name] = {"path": path, "psnr": psnr(reconstruct(other, images, None), images).mean().item(),
                           "bits": other.spec.max_tokens * other.spec.bits_per_token}
            print(name, extra[name], flush=True)

    auto = tok.encode_to_quality(images, args.target_psnr)
    chosen = auto.tokens_per_image()
    reached = psnr(tok.decode(auto).clamp(-1, 1), images) >= args.target_psnr
    extra["auto"] = {"target_psnr": args.target_psnr, "reached": reached.float().mean().item(),
                     "mean_k": chosen.float().mean().item()}
    if shapes:
        by_count: dict[int, list[int]] = {}
        for it, k in zip(items, chosen.tolist()):
            by_count.setdefault(len(it["attributes"]), []).append(k)
        extra["auto"]["mean_k_by_objects"] = {n: sum(v) / len(v) for n, v in sorted(by_count.items())}
    print("auto", extra["auto"], flush=True)
    columns = ["k", "bits_tokens", "bits_box", "psnr", *(f"psnr_in_box_{c}" for c in ("neither", "encoder", "decoder", "both")),
               "psnr_in_box_neither_at_bits_both", "psnr_outside_neither", "psnr_outside_both"]
    if shapes:
        results = "promptable" if args.split == "test" else f"promptable-{args.split}"
    else:
        results = f"promptable-{Path(args.data).resolve().name}-{args.split}"
    if args.region_share is not None:
        results += f"-share{args.region_share:g}"
    report(results, rows, columns, extra)


if __name__ == "__main__":
    main()
