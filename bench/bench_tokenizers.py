"""Tokenizer throughput on CPU for every CPU preset: training steps and encode/decode, images/s,
fp32 beside bf16 autocast (quantizers and losses stay fp32 inside).

    .venv/bin/python bench/bench_tokenizers.py [--batch 32] [--presets vq-f4-shapes ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, report  # noqa: E402

from trilemma import registry  # noqa: E402

CPU_PRESETS = [n for n in registry.preset_names("tokenizer") if n.endswith("-shapes")] + ["patch4-8bit"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--presets", nargs="+", default=CPU_PRESETS)
    args = ap.parse_args()
    rows = []
    x = torch.rand(args.batch, 3, 32, 32) * 2 - 1
    for name in args.presets:
        for dtype in ("fp32", "bf16"):
            torch.manual_seed(0)
            tok = registry.build("tokenizer", name)
            ctx = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")  # noqa: E731
            row = {"preset": name, "dtype": dtype, "params_M": sum(p.numel() for p in tok.parameters()) / 1e6}
            if tok.trainable:
                opt = torch.optim.AdamW(tok.parameters(), 1e-4)

                def step():
                    with ctx():
                        out = tok(x)
                    loss = (out.recon.float() - x).pow(2).mean() + sum(out.losses.values())
                    opt.zero_grad()
                    loss.backward()
                    opt.step()

                tok.train()
                row["train_img_s"] = args.batch / best_time(step, repeat=3, warmup=2)
            tok.eval()
            with torch.no_grad(), ctx():
                tokens = tok.encode(x)
                row["encode_img_s"] = args.batch / best_time(lambda: tok.encode(x))
                row["decode_img_s"] = args.batch / best_time(lambda: tok.decode(tokens))
            rows.append(row)
    report("tokenizers", rows, ["preset", "dtype", "params_M", "train_img_s", "encode_img_s", "decode_img_s"])


if __name__ == "__main__":
    main()
