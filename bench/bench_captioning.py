"""One model that reads and writes images: a DALL-E trained in both orders (``caption_share``)
against the same DALL-E trained text -> image only, at the same steps, on one tokenizer.

Reports, on shapes: captioning of unseen test compositions (per attribute / object / caption, by
parsing the caption), text -> image adherence of both models on the benchmark's unseen prompts (the
probe's, and for the two-order model the round trip: its own captions of its images against the
prompts), and caption speed (images per second at batch 1 and 64).

    .venv/bin/python bench/bench_captioning.py --tokenizer RUN/tokenizers/vq-gen --probe RUN/probe \
        [--steps 1200] [--batch 16] [--share 0.5] [--n 300] [--out runs/bench-captioning]

Both models train on the shapes train split (20k images tokenized once, shared), with the demo's
DALL-E settings (dim 192, lr 2e-3, bf16 autocast; sampling at temperature 0.5, guidance 3).
Writes bench/results/captioning.json (``--name``: another file, e.g. one per share).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from trilemma.demo.plan import DALLE_SAMPLING  # noqa: E402
from trilemma.pipeline import Pipeline  # noqa: E402
from trilemma.studies.captioning import evaluate_captioning  # noqa: E402
from trilemma.studies.generation import benchmark, evaluate_generation  # noqa: E402
from trilemma.training.generator import train_generator  # noqa: E402
from trilemma.training.loop import TrainConfig  # noqa: E402

ATTRIBUTES = ("shape", "color", "size", "position")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, help="a discrete tokenizer run (e.g. a demo's vq-gen)")
    ap.add_argument("--probe", default="runs/bench-probe", help="the shapes probe run (trained there when missing)")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--share", type=float, default=0.5, help="the two-order model's caption_share")
    ap.add_argument("--n", type=int, default=300, help="prompts and captioned images")
    ap.add_argument("--out", default="runs/bench-captioning")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="captioning", help="results file: bench/results/NAME.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=2e-3, eval_every=args.steps,
                      save_every=args.steps, mixed_precision="bf16")
    runs = {"text -> image": out / "one-order", "both orders": out / "two-order"}
    for name, run in runs.items():
        share = args.share if name == "both orders" else 0.0
        t0 = time.perf_counter()
        train_generator("dalle", args.tokenizer, "shapes", run, cfg, preset="dalle-shapes", cache_dir=out / "cache",
                        resume=(run / "model" / "config.json").exists(),
                        overrides={"dim": 192, "heads": 3, "caption_share": share})
        print(f"{name}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    pipes = {name: Pipeline.load(run) for name, run in runs.items()}
    bench = benchmark("shapes", args.n, 32, cache_dir=out, probe_dir=args.probe, diagnostic_n=0)
    rows = []
    for name, pipe in pipes.items():
        gen = evaluate_generation(pipe, bench, DALLE_SAMPLING, progress=False)
        row = {"model": name, **{f"adherence_{a}": gen[f"adherence_{a}_acc"] for a in ATTRIBUTES},
               "adherence_mean": sum(gen[f"adherence_{a}_acc"] for a in ATTRIBUTES) / 4, "fid": gen["fid"],
               "fid_floor": gen["fid_floor"]}
        if "round_trip_shape_acc" in gen:
            row.update({f"round_trip_{a}": gen[f"round_trip_{a}_acc"] for a in ATTRIBUTES})
            captioned = evaluate_captioning(pipe, "shapes", args.n, progress=False)
            row.update({f"caption_{a}": captioned[f"caption_{a}_acc"] for a in ATTRIBUTES})
            row.update(caption_image=captioned["caption_image_acc"], caption_exact=captioned["caption_exact"])
            for batch in (1, 64):
                timed = evaluate_captioning(pipe, "shapes", 64, batch_size=batch, progress=False)
                row[f"captions_per_s_batch{batch}"] = timed["captions_per_s"]
        rows.append(row)
        print(row, flush=True)
    columns = ["model", *(f"adherence_{a}" for a in ATTRIBUTES), "adherence_mean", "fid", "fid_floor",
               *(f"round_trip_{a}" for a in ATTRIBUTES), *(f"caption_{a}" for a in ATTRIBUTES), "caption_image",
               "caption_exact", "captions_per_s_batch1", "captions_per_s_batch64"]
    report(args.name, rows, columns, {
        "steps": args.steps, "batch": args.batch, "caption_share": args.share, "n": args.n,
        "protocol": "captions: the first n shapes test images (unseen compositions), greedy; adherence: the "
                    "benchmark's unseen prompts (val), reference from test; the probe trained on train"})


if __name__ == "__main__":
    main()
