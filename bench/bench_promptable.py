"""The promptable tokenizer on held-out shapes: PSNR against the budget k, the cost of ordering
(the same network trained without tail dropout), a fixed tokenizer at the same bits, the box study
(``region_study``: the box told to neither half, the encoder only, the decoder only, both; at the
same total bits, the box's ~30 bits counted), and --budget auto.

    .venv/bin/python bench/bench_promptable.py --tokenizer TOK_DIR [--split val|test] \
        [--unordered FLAT_DIR] [--fixed VQ_DIR] [--n 500] [--target-psnr 25] [--seed 0]

TOK_DIR is a trained promptable tokenizer, FLAT_DIR the same preset trained with
``--set tail_dropout=false``, VQ_DIR a fixed tokenizer at about the same bits per image.

Knobs are tuned on val (the default, the first --n images of shapes' val split); a tuned
tokenizer's numbers are reported once, with --split test. Boxes: the grid cell of each image's first
object (shapes draws objects in a 3x3 grid), and as a control boxes drawn without looking at the
image (``random_boxes``, seeded by --seed), which say whether a gain needs the box on an object.
Writes bench/results/promptable.json (test) or promptable-val.json (val), the split recorded in it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from trilemma import checkpoint  # noqa: E402
from trilemma.data import load_dataset  # noqa: E402
from trilemma.metrics.scores import psnr  # noqa: E402
from trilemma.metrics.prompted import first_object_boxes, random_boxes, reconstruct, region_study  # noqa: E402
from trilemma.studies.tradeoff import budget_sweep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--split", choices=("val", "test"), default="val",
                    help="val: tune on it (default); test: report a tuned tokenizer, once")
    ap.add_argument("--unordered", default=None, help="the same preset trained with --set tail_dropout=false")
    ap.add_argument("--fixed", default=None, help="a fixed tokenizer at about the same bits per image")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--target-psnr", type=float, default=25.0)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random boxes")
    args = ap.parse_args()
    torch.set_num_threads(2)
    load = lambda d: checkpoint.load(checkpoint.resolve_checkpoint(d), kind="tokenizer")  # noqa: E731
    tok = load(args.tokenizer)
    size = tok.image_size
    ds = load_dataset("shapes", split=args.split, size=size, length=args.n)
    items = [ds[i] for i in range(args.n)]
    images = torch.stack([it["image"] for it in items])
    boxes = first_object_boxes(items)
    budgets = budget_sweep(tok)
    bits = tok.spec.bits_per_token
    # The box study at every budget (the target reads k <= K/4): the large ones show how far a box
    # can rise in its cell, the ceiling the small budgets climb towards.
    rows = region_study(tok, images, boxes, budgets)
    for row in rows:
        print(row, flush=True)
    anywhere = region_study(tok, images, random_boxes(args.n, seed=args.seed), budgets)
    for row in anywhere:
        print("random boxes", row, flush=True)

    extra: dict = {"tokenizer": args.tokenizer, "split": args.split, "n": args.n, "bits_per_token": bits,
                   "boxes": "the first object's grid cell", "random_boxes": {"seed": args.seed, "rows": anywhere}}
    for name, path in (("unordered", args.unordered), ("fixed", args.fixed)):
        if path:
            other = load(path)
            extra[name] = {"path": path, "psnr": psnr(reconstruct(other, images, None), images).mean().item(),
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
    columns = ["k", "bits_tokens", "bits_box", "psnr", *(f"psnr_in_box_{c}" for c in ("neither", "encoder", "decoder", "both")),
               "psnr_in_box_neither_at_bits_both", "psnr_outside_neither", "psnr_outside_both"]
    report("promptable" if args.split == "test" else f"promptable-{args.split}", rows, columns, extra)


if __name__ == "__main__":
    main()
