"""Training-step cost: one optimizer step (forward + backward + AdamW) of each tokenizer and
generator preset the demo trains, on synthetic inputs of the demo's shapes, in fp32 and under bf16
autocast. This is what picks model sizes and precisions for a time budget: steps a minute, side by
side, in one run. bf16 does not pay everywhere on a CPU (measured on a Xeon with AMX, one thread:
1.9x faster for vq-f4, 1.5x for the demo's DALL-E, 0.53x for its diffusion UNet).

    .venv/bin/python bench/bench_steps.py [--models tokenizer:vq-f4-shapes generator:dalle-shapes ...]
        (a model may carry --set values: generator:dalle-shapes@dim=128@heads=2) [--batch-tokenizer 32] [--batch-generator 64]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, report  # noqa: E402

from trilemma import registry  # noqa: E402
from trilemma.cli.options import overrides  # noqa: E402
from trilemma.data.shapes import ShapesDataset  # noqa: E402
from trilemma.data.text import TextTokenizer  # noqa: E402

DEFAULT = ["tokenizer:vq-f4-shapes", "tokenizer:rvq-f4-shapes", "tokenizer:fsq-f4-shapes", "tokenizer:lfq-f4-shapes",
           "tokenizer:ae-f4-shapes", "tokenizer:promptable-shapes", "generator:dalle-shapes", "generator:parti-shapes",
           "generator:muse-shapes", "generator:diffusion-shapes",
           # the demo's sizes (trilemma/demo/plan.py)
           "tokenizer:vq-f4-shapes@channels=32@num_res_blocks=0", "generator:dalle-shapes@dim=192@heads=3",
           "generator:parti-shapes@dim=192@heads=3", "generator:muse-shapes@dim=128@heads=2",
           "generator:diffusion-shapes@channels=[32,64]"]


def _step(model: torch.nn.Module, loss_fn, bf16: bool) -> callable:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _tokenizer_loss(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = model(x)
    return {"loss": sum(out.losses.values(), out.recon.float().sub(x).pow(2).mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=DEFAULT, help="kind:preset, optionally kind:preset@key=value@key=value (values as --set)")
    ap.add_argument("--batch-tokenizer", type=int, default=32)
    ap.add_argument("--batch-generator", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--name", default="steps")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; the demo's workers use 1)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = ShapesDataset(split="train", size=32)
    images = torch.stack([data[i]["image"] for i in range(max(args.batch_tokenizer, args.batch_generator))])
    captions = [data[i]["caption"] for i in range(args.batch_generator)]
    text = TextTokenizer.build(captions, max_length=24)
    text_ids = text.encode(captions)
    tokenizers = {d: registry.build("tokenizer", n).eval() for d, n in (("discrete", "vq-f4-shapes"), ("continuous", "ae-f4-shapes"))}
    rows = []
    for spec in args.models:
        kind, _, rest = spec.partition(":")
        name, _, sets = rest.partition("@")  # kind:preset@key=value@key=value
        fields = overrides(sets.split("@")) if sets else {}
        torch.manual_seed(0)
        if kind == "tokenizer":
            model = registry.build(kind, name, **fields).train()
            x = images[: args.batch_tokenizer]
            loss_fn, batch = (lambda: _tokenizer_loss(model, x)), x.shape[0]
        else:
            continuous = registry.get_preset(kind, name).model == "diffusion"
            tokenizer = tokenizers["continuous" if continuous else "discrete"]
            model = registry.build(kind, name, spec=tokenizer.spec, text=text, **fields).train()
            with torch.no_grad():
                tokens = tokenizer.encode(images[: args.batch_generator])
            model.fit(tokens)
            inp = model.model_input(tokens)
            loss_fn, batch = (lambda: model(inp, text_ids)), args.batch_generator
        fp32, bf16 = (best_time(_step(model, loss_fn, bf16), repeat=args.repeat, warmup=2) for bf16 in (False, True))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append({"model": spec, "params_m": params, "batch": batch, "step_s_fp32": fp32, "step_s_bf16": bf16,
                     "bf16_speedup": fp32 / bf16, "steps_per_min": 60 / min(fp32, bf16)})
        print(rows[-1], flush=True)
    report(args.name, rows, ["model", "params_m", "batch", "step_s_fp32", "step_s_bf16", "bf16_speedup", "steps_per_min"])


if __name__ == "__main__":
    main()
