"""A promptable tokenizer on your own pictures, at one budget, with and without a box: the README's
picture of what a box buys. Each row: the image with the box drawn, its reconstruction from k
tokens without a prompt, from k tokens encoded and decoded with the box (the box's bits then count
too: the caption gives both), the PSNR inside the box under each.

    .venv/bin/python bench/promptable_photo.py --tokenizer TOK_DIR --budget 4 \
        --image photos/134_example.png 0.3,0.15,0.75,0.75 --image photos/016_car.png 0.2,0.5,0.8,0.9 \
        --out docs/images/promptable_photo.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from trilemma import checkpoint  # noqa: E402
from trilemma.images import load_image, save_grid  # noqa: E402
from trilemma.metrics.prompted import BOX_LEVELS, box_bits, quantize_boxes  # noqa: E402
from trilemma.metrics.scores import psnr  # noqa: E402
from trilemma.tokenizers.prompts import box_mask  # noqa: E402
from trilemma.tokens import Prompt  # noqa: E402

RED = torch.tensor([1.0, -1.0, -1.0])[:, None]


def outlined(image: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``image`` [3, H, W] with ``box`` (x0, y0, x1, y1 in [0, 1]) drawn one pixel wide in red."""
    out, size = image.clone(), image.shape[-1]
    x0, y0, x1, y1 = (min(size - 1, int(v * size)) for v in box.tolist())
    out[:, y0, x0 : x1 + 1] = out[:, y1, x0 : x1 + 1] = RED
    out[:, y0 : y1 + 1, x0] = out[:, y0 : y1 + 1, x1] = RED
    return out


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--image", nargs=2, action="append", required=True, metavar=("PATH", "X0,Y0,X1,Y1"))
    ap.add_argument("--out", default="docs/images/promptable_photo.png")
    args = ap.parse_args()
    tok = checkpoint.load(checkpoint.resolve_checkpoint(args.tokenizer), kind="tokenizer").eval()
    cells, captions = [], []
    bits = args.budget * tok.spec.bits_per_token
    for path, box in args.image:
        image = load_image(path, size=tok.image_size)[None]
        boxes = quantize_boxes(torch.tensor([[[float(v) for v in box.split(",")]]]), BOX_LEVELS)
        inside = box_mask(Prompt(boxes=boxes), 1, tok.image_size, image.device)
        plain = tok.decode(tok.encode(image, Prompt(budget=args.budget))).clamp(-1, 1)
        boxed = tok.decode(tok.encode(image, Prompt(budget=args.budget, boxes=boxes))).clamp(-1, 1)
        scores = [psnr(x, image, mask=inside).item() for x in (plain, boxed)]
        cells += [outlined(image[0], boxes[0, 0]), plain[0], outlined(boxed[0], boxes[0, 0])]
        captions += [Path(path).name, f"k={args.budget}, no box: {scores[0]:.1f} dB in box ({bits:.0f} bits)",
                     f"k={args.budget} + box: {scores[1]:.1f} dB ({bits + box_bits(1):.0f} bits)"]
        print(f"{path}: in the box {scores[0]:.2f} dB without it, {scores[1]:.2f} dB with it", flush=True)
    path = save_grid(torch.stack(cells), args.out, captions=captions, nrow=3, scale=3)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
