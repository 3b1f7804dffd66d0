"""Fused self-attention projection (one ``qkv`` matmul, keys and values cached in one copy) against
separate ``q`` and ``kv`` projections with two cache copies, side by side in one process: DALL-E
sampling at the configuration of ``bench_peers.py`` (width 256, 4 blocks of 4 heads, 16 text + 256
image tokens, 1024 codes, top-k 10%), the same weights both ways, timed interleaved (each round
times every variant once, in alternating order): the best round's ratio and the ratio of medians.
Random weights: timing only.

    .venv/bin/python bench/bench_fused_qkv.py [--batches 1 16] [--rounds 5] [--threads 1]
        (writes bench/results/fused_qkv.json)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from trilemma import registry  # noqa: E402
from trilemma.data.text import TextTokenizer  # noqa: E402
from trilemma.generators.sampling import SamplingConfig  # noqa: E402
from trilemma.nn.transformer import Attention, KVCache  # noqa: E402
from trilemma.tokens import TokenSpec  # noqa: E402

WIDTH, DEPTH, HEADS, TEXT, SIDE, CODES = 256, 4, 4, 16, 16, 1024


class SeparateCache(KVCache):
    """Self-attention keys and values in two buffers per layer."""

    def allocate(self, layer: int, like: torch.Tensor, max_len: int):
        b, h, _, d = like.shape
        self.max_len = max_len
        self.self_kv[layer] = (like.new_empty(b, h, max_len, d), like.new_empty(b, h, max_len, d))
        return self.self_kv[layer]


class SeparateSelfAttention(nn.Module):
    """Self-attention with separate q and kv projections (the causal paths DALL-E samples with)."""

    def __init__(self, fused: Attention):
        super().__init__()
        dim = fused.out.in_features
        self.heads, self.dropout = fused.heads, fused.dropout
        self.q, self.kv, self.out = nn.Linear(dim, dim, bias=False), nn.Linear(dim, 2 * dim, bias=False), fused.out
        self.q.weight.data, self.kv.weight.data = fused.qkv.weight.data.split([dim, 2 * dim])

    def _split(self, x):
        return rearrange(x, "b n (h d) -> b h n d", h=self.heads)

    def forward(self, x, context=None, causal=False, cache=None, layer=0, max_len=0, key_mask=None, attn_mask=None):
        q = self._split(self.q(x))
        mask, is_causal = None, False
        k, v = (self._split(t) for t in self.kv(x).chunk(2, dim=-1))
        if cache is not None:
            start, n = cache.length, x.shape[1]
            buf = cache.self_kv[layer]
            if buf is None:
                buf = cache.allocate(layer, k, max_len or start + n)
            buf[0][:, :, start : start + n] = k
            buf[1][:, :, start : start + n] = v
            k, v = buf[0][:, :, : start + n], buf[1][:, :, : start + n]
            if causal and n > 1:
                qpos = torch.arange(start, start + n, device=x.device)[:, None]
                mask = qpos >= torch.arange(start + n, device=x.device)[None, :]
        else:
            is_causal = causal
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.out(rearrange(y, "b h n d -> b n (h d)"))


def separate(gen: nn.Module) -> nn.Module:
    """A copy of ``gen`` with every self-attention unfused (same weights) and two-buffer caches."""
    other = copy.deepcopy(gen)
    for block in other.transformer.blocks:
        block.attn = SeparateSelfAttention(block.attn)
    other.transformer.new_cache = lambda cross_only=False: SeparateCache(DEPTH, cross_only)
    return other


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="fused_qkv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    text = TextTokenizer.build(["a large red circle at the top left and a small blue square"], max_length=TEXT)
    spec = TokenSpec("discrete", SIDE * SIDE, vocab_size=CODES, grid=(SIDE, SIDE))
    torch.manual_seed(0)
    fused = registry.build("generator", "dalle-shapes", spec=spec, text=text, dim=WIDTH, depth=DEPTH, heads=HEADS).eval()
    variants = {"separate": separate(fused), "fused": fused}
    sampling = SamplingConfig(top_k=CODES // 10, seed=0)
    rows = []
    for batch in args.batches:
        ids = text.encode(["a large red circle at the top left"] * batch)
        drawn = {k: g.sample(ids, sampling).ids for k, g in variants.items()}  # also the warm-up
        assert torch.equal(drawn["separate"], drawn["fused"]), "the variants draw different tokens"
        times = {k: [] for k in variants}
        for r in range(args.rounds):
            for k, g in list(variants.items())[:: 1 if r % 2 else -1]:  # alternating which goes first
                t = time.perf_counter()
                g.sample(ids, sampling)
                times[k].append(time.perf_counter() - t)
        best = {k: min(t) for k, t in times.items()}
        median = {k: statistics.median(t) for k, t in times.items()}
        rows.append({"batch": batch, "separate_s": best["separate"], "fused_s": best["fused"],
                     "separate/fused": best["separate"] / best["fused"],
                     "median separate/fused": median["separate"] / median["fused"],
                     "fused_ms_per_token": 1000 * best["fused"] / (SIDE * SIDE)})
    report(args.name, rows, ["batch", "separate_s", "fused_s", "separate/fused", "median separate/fused",
                              "fused_ms_per_token"])


if __name__ == "__main__":
    main()
