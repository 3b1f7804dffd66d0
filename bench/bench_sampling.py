"""Sampling cost: KV-cached vs uncached autoregressive decoding vs one teacher-forced forward, and
masked (Muse) parallel decoding in its default number of passes, side by side.

Targets (issue "Generators I"): at 256 image tokens, batch 16, cached sampling is >= 20x faster
than uncached (which recomputes the whole prefix every step, ~N/2 times the arithmetic), and costs
<= 3x one teacher-forced forward pass over the same tokens (the same arithmetic, done in one go).
``sample_s`` is each generator's own sampling: KV-cached decoding for the autoregressive ones, all
parallel passes for a masked one (which has no cache and no uncached variant). Each generator gets
the tokens it models for an image of ``--tokens`` positions (side x side): ids on that grid; VAR the
maps of a multi-scale tokenizer ending at that side (VAR's schedule, one pass per scale); MAR and
diffusion 4-d latents on it. Random weights: timing only.

    .venv/bin/python bench/bench_sampling.py [--tokens 256] [--batch 16] [--generators dalle-shapes ...] [--bf16]
        [--name sampling]   (writes bench/results/NAME.json)
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, report  # noqa: E402

from trilemma import registry  # noqa: E402
from trilemma.data.text import TextTokenizer  # noqa: E402
from trilemma.generators.sampling import SamplingConfig  # noqa: E402
from trilemma.tokens import Tokens, TokenSpec  # noqa: E402

GREEDY = SamplingConfig(temperature=0)
SCALES = {8: (1, 2, 3, 4, 6, 8), 16: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)}  # VAR's schedules for 8x8 and 16x16 maps


def spec_for(preset: str, side: int) -> TokenSpec:
    """The tokens ``preset``'s family models for a side x side image of tokens."""
    cls = registry.model_class("generator", registry.get_preset("generator", preset).model)
    if "discrete" not in cls.accepts:
        return TokenSpec("continuous", side * side, latent_dim=4, grid=(side, side))
    grid = TokenSpec("discrete", side * side, vocab_size=1024, grid=(side, side))
    try:
        cls.check_spec(grid)
        return grid
    except ValueError:  # a next-scale model: the maps of a multi-scale tokenizer
        scales = SCALES[side]
        return TokenSpec("discrete", sum(s * s for s in scales), vocab_size=1024, scales=scales)


def random_tokens(spec: TokenSpec, batch: int) -> Tokens:
    if spec.discrete:
        return Tokens(ids=torch.randint(spec.vocab_size, (batch, spec.max_tokens)))
    return Tokens(latents=torch.randn(batch, spec.max_tokens, spec.latent_dim))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--generators", nargs="+", default=["dalle-shapes", "parti-shapes", "muse-shapes"])
    ap.add_argument("--bf16", action="store_true", help="also time under bf16 autocast")
    ap.add_argument("--name", default="sampling", help="results file: bench/results/NAME.json")
    args = ap.parse_args()
    side = int(args.tokens**0.5)
    text = TextTokenizer.build(["a large red circle at the top left and a small blue square"], max_length=16)
    prompts = text.encode(["a large red circle at the top left"] * args.batch)
    rows = []
    for preset in args.generators:
        torch.manual_seed(0)
        spec = spec_for(preset, side)
        gen = registry.build("generator", preset, spec=spec, text=text).eval()
        inputs = gen.model_input(random_tokens(spec, args.batch))
        for dtype in (["fp32", "bf16"] if args.bf16 else ["fp32"]):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

            def forward():
                with torch.no_grad(), ctx:
                    gen(inputs, prompts)

            def cached():
                with ctx:
                    gen.sample(prompts, GREEDY, use_cache=True)

            def uncached():
                with ctx:
                    gen.sample(prompts, GREEDY, use_cache=False)

            def masked():
                with ctx:
                    gen.sample(prompts, GREEDY)

            t_fwd = best_time(forward)
            if "use_cache" in inspect.signature(gen.sample).parameters:
                t_cached = best_time(cached, repeat=2)
                t_uncached = best_time(uncached, repeat=1, warmup=0)
            else:  # masked decoding: a fixed number of full passes, nothing to cache
                t_cached = best_time(masked, repeat=2)
                t_uncached = None
            rows.append({
                "generator": preset, "dtype": dtype, "tokens": spec.max_tokens, "batch": args.batch,
                "forward_s": t_fwd, "sample_s": t_cached, "s_per_image": t_cached / args.batch, "uncached_s": t_uncached,
                "uncached/sample": t_uncached / t_cached if t_uncached else None, "sample/forward": t_cached / t_fwd,
                "tokens_per_s": args.batch * spec.max_tokens / t_cached,
            })
    report(args.name, rows, ["generator", "dtype", "tokens", "batch", "forward_s", "sample_s", "s_per_image", "uncached_s",
                              "uncached/sample", "sample/forward", "tokens_per_s"],
           {"targets": {"uncached/sample": ">= 20 (autoregressive)", "sample/forward": "<= 3 (autoregressive)"}})


if __name__ == "__main__":
    main()
