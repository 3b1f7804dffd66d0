"""MAR against latent diffusion on the same autoencoder's latents: prompt adherence, domain FID
(beside the real-vs-real floor) and seconds per image at 16 / 32 / 64 steps, side by side. A MAR
step reveals a share of the tokens (each drawn by its head's own denoising loop); a diffusion step
denoises every latent at once: the two "steps" cost differently, which is what the seconds show.

    .venv/bin/python bench/bench_mar.py --mar RUN/mar --diffusion RUN/diffusion --probe RUN/probe \
        [--n 500] [--steps 16 32 64] [--cfg-scale 3]

Both generators are trained beforehand on one tokenizer (`trilemma demo --full` trains both on
its ae-gen); the benchmark is the headline category (unseen compositions: prompts from val, the
reference from test), with the probe of ``--probe`` (trained on first use when missing).
Writes bench/results/mar.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import GENERATION_COLUMNS, generation_row, report  # noqa: E402

from trilemma import checkpoint  # noqa: E402
from trilemma.generators.sampling import SamplingConfig  # noqa: E402
from trilemma.pipeline import Pipeline  # noqa: E402
from trilemma.studies.generation import benchmark, evaluate_generation  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mar", required=True, help="a MAR generator run")
    ap.add_argument("--diffusion", required=True, help="a latent diffusion run on the same tokenizer")
    ap.add_argument("--probe", default="runs/bench-probe", help="the shapes probe run (trained there when missing)")
    ap.add_argument("--n", type=int, default=500, help="prompts (and real images) per evaluation")
    ap.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    pipes = {name: Pipeline.load(run) for name, run in (("mar", args.mar), ("diffusion", args.diffusion))}
    tokenizers = {checkpoint.recorded_tokenizer(checkpoint.resolve_checkpoint(run), kind="generator").resolve()
                  for run in (args.mar, args.diffusion)}
    if len(tokenizers) != 1:
        raise SystemExit(f"the two generators were trained on different tokenizers ({', '.join(map(str, tokenizers))})")
    size = pipes["mar"].tokenizer.image_size
    bench = benchmark("shapes", args.n, size, cache_dir="runs", probe_dir=args.probe, diagnostic_n=0)
    rows = []
    for steps in args.steps:
        for name, pipe in pipes.items():
            sampling = SamplingConfig(cfg_scale=args.cfg_scale, seed=0, steps=steps)
            out = evaluate_generation(pipe, bench, sampling, progress=False)
            row = {"generator": name, "steps": steps, **generation_row(out)}
            rows.append(row)
            print(row, flush=True)
    extra = {"runs": "the generators of one `trilemma demo --full` run, on its ae-gen",
             "n": args.n, "cfg_scale": args.cfg_scale, "seed": 0,
             "protocol": "unseen compositions: prompts and floor from val, reference from test"}
    report("mar", rows, ["generator", "steps", *GENERATION_COLUMNS], extra)


if __name__ == "__main__":
    main()
