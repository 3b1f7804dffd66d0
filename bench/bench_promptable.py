"""The promptable tokenizer on held-out shapes: PSNR against the budget k, the cost of ordering
(the same network trained without tail dropout), a fixed tokenizer at the same bits, the gain of a
box prompt inside the box (and what it costs outside), and --budget auto.

    .venv/bin/python bench/bench_promptable.py --tokenizer runs/promptable \
        [--unordered runs/promptable-flat] [--fixed runs/vq-320] [--n 500] [--target-psnr 25]

The box of an image is the grid cell of its first object (shapes draws objects in a 3x3 grid).
Writes bench/results/promptable.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from trilemma import checkpoint  # noqa: E402
from trilemma.data import POSITIONS, load_dataset  # noqa: E402
from trilemma.eval.metrics import psnr  # noqa: E402
from trilemma.tokenizers.promptable import box_mask  # noqa: E402
from trilemma.tokens import Prompt  # noqa: E402


def masked_psnr(recon: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR per image over the pixels where ``mask`` [B, 1, H, W] is 1 (range 2: images in [-1, 1])."""
    err = ((recon.double() - images.double()) ** 2).mean(1, keepdim=True) * mask
    return 10 * torch.log10(4.0 / (err.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)))


@torch.no_grad()
def recon(tok, images, prompt, batch=250) -> torch.Tensor:
    parts = []
    for start in range(0, len(images), batch):
        p = prompt if prompt is None or prompt.boxes is None else Prompt(budget=prompt.budget, boxes=prompt.boxes[start : start + batch])
        parts.append(tok.decode(tok.encode(images[start : start + batch], p)).clamp(-1, 1))
    return torch.cat(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--unordered", default=None, help="the same preset trained with --set tail_dropout=false")
    ap.add_argument("--fixed", default=None, help="a fixed tokenizer at about the same bits per image")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--target-psnr", type=float, default=25.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    load = lambda d: checkpoint.load(checkpoint.resolve_checkpoint(d), kind="tokenizer")  # noqa: E731
    tok = load(args.tokenizer)
    k_max, size = tok.spec.max_tokens, tok.image_size
    ds = load_dataset("shapes", split="test", size=size, length=args.n)
    items = [ds[i] for i in range(args.n)]
    images = torch.stack([it["image"] for it in items])
    cells = [POSITIONS.index(it["attributes"][0]["position"]) for it in items]
    boxes = torch.tensor([[[c % 3 / 3, c // 3 / 3, (c % 3 + 1) / 3, (c // 3 + 1) / 3]] for c in cells])
    inside = box_mask(Prompt(boxes=boxes), args.n, size, images.device)
    budgets = sorted({2**i for i in range(k_max.bit_length()) if 2**i <= k_max} | {k_max})
    bits = tok.spec.bits_per_token

    rows = []
    for k in budgets:
        plain = recon(tok, images, Prompt(budget=k))
        row = {"k": k, "bits": k * bits, "psnr": psnr(plain, images).mean().item()}
        if k <= k_max // 4:
            boxed = recon(tok, images, Prompt(budget=k, boxes=boxes))
            row.update({
                "psnr_in_box": masked_psnr(plain, images, inside).mean().item(),
                "psnr_in_box_prompted": masked_psnr(boxed, images, inside).mean().item(),
                "psnr_outside": masked_psnr(plain, images, 1 - inside).mean().item(),
                "psnr_outside_prompted": masked_psnr(boxed, images, 1 - inside).mean().item(),
            })
        rows.append(row)
        print(row, flush=True)

    extra: dict = {"tokenizer": args.tokenizer, "n": args.n, "bits_per_token": bits}
    for name, path in (("unordered", args.unordered), ("fixed", args.fixed)):
        if path:
            other = load(path)
            extra[name] = {"path": path, "psnr": psnr(recon(other, images, None), images).mean().item(),
                           "bits": other.spec.max_tokens * other.spec.bits_per_token}
            print(name, extra[name], flush=True)

    auto = tok.encode_to_quality(images, args.target_psnr)
    chosen = auto.tokens_per_image()
    reached = psnr(tok.decode(auto).clamp(-1, 1), images) >= args.target_psnr
    by_count: dict[int, list[int]] = {}
    for it, k in zip(items, chosen.tolist()):
        by_count.setdefault(len(it["attributes"]), []).append(k)
    extra["auto"] = {"target_psnr": args.target_psnr, "reached": reached.float().mean().item(),
                     "mean_k": chosen.float().mean().item(),
                     "mean_k_by_objects": {n: sum(v) / len(v) for n, v in sorted(by_count.items())}}
    print("auto", extra["auto"], flush=True)
    report("promptable", rows, ["k", "bits", "psnr", "psnr_in_box", "psnr_in_box_prompted", "psnr_outside",
                                "psnr_outside_prompted"], extra)


if __name__ == "__main__":
    main()
