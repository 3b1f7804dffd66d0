"""The diffusion generator on shapes: prompt adherence, domain FID (beside the real-vs-real floor)
and seconds per image against the number of denoising steps, for DDIM and DPM-Solver++; and the
token-conditioned decoder against its tokenizer's own decoder on the same tokens.

    .venv/bin/python bench/bench_diffusion.py --generator GEN_DIR [--decoder DEC_DIR] \
        [--n 500] [--steps 5 10 20 50] [--cfg-scale 3]

Both runs are trained beforehand (the README's tour gives the commands: `trilemma train generator
--kind diffusion`, `trilemma train decoder`); the shapes probe is trained on first use and cached
(``probe_dir`` below). Writes bench/results/diffusion.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import GENERATION_COLUMNS, generation_row, report  # noqa: E402

from trilemma.studies.generation import benchmark, evaluate_generation  # noqa: E402
from trilemma.generators.sampling import SCHEDULERS, SamplingConfig  # noqa: E402
from trilemma.pipeline import Pipeline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator", required=True, help="a diffusion generator run")
    ap.add_argument("--decoder", default=None, help="a token-conditioned decoder run (trilemma train decoder)")
    ap.add_argument("--n", type=int, default=500, help="prompts (and real images) per evaluation")
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(2)

    pipe = Pipeline.load(args.generator)
    bench = benchmark("shapes", args.n, pipe.tokenizer.image_size, cache_dir="runs", probe_dir="runs/bench-probe",
                      diagnostic_n=0)  # the headline (unseen compositions) only
    rows = []
    for scheduler in SCHEDULERS:
        for steps in args.steps:
            sampling = SamplingConfig(cfg_scale=args.cfg_scale, seed=0, steps=steps, scheduler=scheduler)
            out = evaluate_generation(pipe, bench, sampling, progress=False)
            row = {"scheduler": scheduler, "steps": steps, **generation_row(out)}
            rows.append(row)
            print(row, flush=True)
    extra = {"generator": args.generator, "n": args.n, "cfg_scale": args.cfg_scale}
    if args.decoder:
        extra["decoder"] = decode_table(args.decoder, bench)
    report("diffusion", rows, ["scheduler", "steps", *GENERATION_COLUMNS], extra)


def decode_table(decoder: str, bench) -> list[dict]:
    """PSNR, SSIM and domain rFID of the tokenizer's own decoder and of the diffusion decoder, on the
    same tokens of the reference images."""
    from trilemma import checkpoint
    from trilemma.metrics.reconstruction import evaluate_reconstruction
    from trilemma.pipeline import load_tokenizer

    tok_dir = checkpoint.recorded_tokenizer(checkpoint.resolve_checkpoint(decoder))
    rows = []
    for name, tok in (("own decoder", load_tokenizer(tok_dir)), ("diffusion decoder", load_tokenizer(tok_dir, decoder))):
        m = evaluate_reconstruction(tok, bench.reference, features=bench.features, lpips=False, progress=False,
                                    floor_images=bench.floor)
        rows.append({"decoder": name, "psnr": m["psnr"], "ssim": m["ssim"], "rfid": m["rfid"], "rfid_floor": m["rfid_floor"],
                     "decode_images_per_s": m["decode_images_per_s"]})
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
