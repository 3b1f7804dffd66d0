"""Pre-norm transformer blocks (GPT-2 / Vaswani et al. 2017) on ``scaled_dot_product_attention``.

Self-attention is causal or bidirectional; cross-attention attends to an encoder's output. A key
mask (True where a key may be attended) keeps a prompt's padding out of both: ``key_mask`` over the
sequence itself, ``context_mask`` over the encoder's output. A ``KVCache`` makes incremental
decoding cost one token's arithmetic per step: self-attention keys and values are written into
preallocated buffers, and cross-attention keys/values of the (fixed) encoder output are computed
once per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass
class TransformerConfig:
    dim: int = 256  # model width
    depth: int = 4  # blocks
    heads: int = 4  # attention heads (dim must divide)
    mlp_ratio: float = 4.0  # hidden width of the MLP, in multiples of dim
    dropout: float = 0.0


class KVCache:
    """Per-layer self-attention keys and values, one buffer [2 (k, v), B, heads, max_len, head_dim]
    each, and the current length.

    ``cross_only``: keep only cross-attention's keys and values (of a fixed context), for models
    that rerun the whole sequence each step (Muse, MAR) but read the same prompt throughout: the
    self-attention then runs uncached, as without a cache."""

    def __init__(self, layers: int, cross_only: bool = False):
        self.self_kv: list[torch.Tensor | None] = [None] * layers
        self.cross_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layers
        self.length = 0  # tokens already in the self-attention buffers
        self.max_len = 0
        self.cross_only = cross_only

    def allocate(self, layer: int, like: torch.Tensor, max_len: int) -> torch.Tensor:
        """A buffer for ``layer`` shaped as ``like`` [2, B, heads, n, head_dim], ``max_len`` long."""
        self.max_len = max_len
        buf = like.new_empty(*like.shape[:3], max_len, like.shape[4])
        self.self_kv[layer] = buf
        return buf


class Attention(nn.Module):
    """Multi-head attention. Self-attention projects queries, keys and values in one matmul
    (``qkv``: a step's fewest operations); cross-attention its queries from ``x`` (``q``) and its
    keys and values from the context (``kv``)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, context_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.cross = context_dim is not None
        if self.cross:
            self.q = nn.Linear(dim, dim, bias=False)
            self.kv = nn.Linear(context_dim, 2 * dim, bias=False)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state dict with self-attention's projections apart (q, kv) loads into the fused qkv:
        # its rows are q's then kv's, so every output is unchanged.
        split = self_attention_split(state_dict, prefix) if not self.cross else None
        if split is not None:
            state_dict[prefix + "qkv.weight"] = torch.cat([state_dict.pop(k) for k in split])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b n (h d) -> b h n d", h=self.heads)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
        max_len: int = 0,
        key_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``key_mask`` [B, keys] (the context's for cross-attention, ``x``'s for self-attention):
        True where a key may be attended, False at padding. ``attn_mask`` [n, n]: True where query i
        may attend key j, for uncached self-attention (VAR's block-causal mask over scales)."""
        mask, is_causal = None, False
        if self.cross:
            q = self._split(self.q(x))
            if cache is not None and cache.cross_kv[layer] is not None:
                k, v = cache.cross_kv[layer]
            else:
                k, v = (self._split(t) for t in self.kv(context).chunk(2, dim=-1))
                if cache is not None:
                    cache.cross_kv[layer] = (k, v)
        else:
            if cache is not None and cache.cross_only:
                cache = None  # the self-attention of a rerun sequence: nothing to keep
            if (key_mask is not None or attn_mask is not None) and cache is not None:
                raise ValueError("`key_mask` and `attn_mask` mask uncached self-attention only")
            qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
            q, k, v = qkv.unbind(0)
            if cache is not None:
                start, n = cache.length, x.shape[1]
                buf = cache.self_kv[layer]
                if buf is None:
                    buf = cache.allocate(layer, qkv[1:], max_len or start + n)
                buf[:, :, :, start : start + n] = qkv[1:]  # keys and values in one copy
                k, v = buf[:, :, :, : start + n].unbind(0)
                if causal and n > 1:
                    # New queries sit at absolute positions start..start+n-1: offset causal mask.
                    qpos = torch.arange(start, start + n, device=x.device)[:, None]
                    mask = qpos >= torch.arange(start + n, device=x.device)[None, :]
            elif causal and key_mask is not None:
                mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril()
            elif attn_mask is not None:
                if causal:
                    raise ValueError("give `attn_mask` or `causal=True`, not both")
                mask = attn_mask
            else:
                is_causal = causal
        if key_mask is not None:
            keep = rearrange(key_mask, "b k -> b 1 1 k")
            mask = keep if mask is None else mask & keep
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(rearrange(y, "b h n d -> b n (h d)"))


def self_attention_split(state_dict: dict, prefix: str) -> tuple[str, str] | None:
    """The names of a self-attention's separate q and kv weights under ``prefix`` in ``state_dict``
    (a layout whose projections are not fused), or None where it has none."""
    names = (prefix + "q.weight", prefix + "kv.weight")
    return names if all(n in state_dict for n in names) else None


def fused_optimizer_state(optimizer_state: dict, saved_model: dict, model: nn.Module,
                          optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer_state``, saved beside ``saved_model`` (a model state dict) when self-attention's
    q and kv were apart, for ``optimizer`` over ``model``'s fused ``qkv``: each fused weight's state
    is its parts' concatenated in ``qkv``'s row order (Adam's moments are elementwise). A state
    without separate projections is returned as it is."""
    names = {id(p): n for n, p in model.named_parameters()}

    def parts(name: str) -> int:
        fused = name.endswith(".qkv.weight") and self_attention_split(saved_model, name[: -len("qkv.weight")])
        return 2 if fused else 1

    groups = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    if all(parts(n) == 1 for g in groups for n in g):
        return optimizer_state
    saved, state, new_groups, index = optimizer_state["state"], {}, [], 0
    for group_names, group in zip(groups, optimizer_state["param_groups"]):
        old = iter(group["params"])
        for name in group_names:
            kept = [saved[i] for i in [next(old) for _ in range(parts(name))] if i in saved]
            if kept:
                state[index] = {k: torch.cat([s[k] for s in kept]) if torch.is_tensor(v) and v.ndim else v
                                for k, v in kept[0].items()}
            index += 1
        new_groups.append({**group, "params": list(range(index - len(group_names), index))})
    return {"state": state, "param_groups": new_groups}


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, context_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dropout)
        self.cross = Attention(cfg.dim, cfg.heads, cfg.dropout, context_dim) if context_dim else None
        self.norm2 = nn.LayerNorm(cfg.dim) if context_dim else None
        self.norm3 = nn.LayerNorm(cfg.dim)
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim), nn.Dropout(cfg.dropout))

    def forward(self, x, context=None, causal=False, cache=None, layer=0, max_len=0, key_mask=None, context_mask=None,
                attn_mask=None):
        x = x + self.attn(self.norm1(x), causal=causal, cache=cache, layer=layer, max_len=max_len, key_mask=key_mask,
                          attn_mask=attn_mask)
        if self.cross is not None:
            x = x + self.cross(self.norm2(x), context=context, cache=cache, layer=layer, key_mask=context_mask)
        return x + self.mlp(self.norm3(x))


class Transformer(nn.Module):
    """A stack of blocks and a final norm. ``context_dim`` adds cross-attention to every block.

    ``key_mask`` [B, n] and ``context_mask`` [B, context length]: True where ``x`` / ``context`` may
    be attended, False at padding (None: everything is). ``attn_mask`` [n, n]: which positions of
    ``x`` each may attend (uncached only; None: all, or causal)."""

    def __init__(self, cfg: TransformerConfig, context_dim: int | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg, context_dim) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.apply(init_weights)

    def new_cache(self, cross_only: bool = False) -> KVCache:
        return KVCache(len(self.blocks), cross_only)

    def forward(self, x, context=None, causal=False, cache: KVCache | None = None, max_len: int = 0,
                key_mask: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None):
        for i, block in enumerate(self.blocks):
            x = block(x, context=context, causal=causal, cache=cache, layer=i, max_len=max_len,
                      key_mask=key_mask, context_mask=context_mask, attn_mask=attn_mask)
        if cache is not None and not cache.cross_only:
            cache.length += x.shape[1]
        return self.norm(x)


def init_weights(m: nn.Module) -> None:
    # GPT-2 style: small normal weights, zero biases.
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def init_text_embeddings(*embeddings: nn.Embedding) -> None:
    """Prompt word and position embeddings at unit variance (PyTorch's default), not
    ``init_weights``' 0.02: at 0.02 a bidirectional encoder block's first attention, uniform at
    init, adds the prompt's mean (std ~0.08) to every position and swamps each word's own
    embedding, so every encoded position reads alike and generators learn the prompt slowly. The
    image embeddings keep 0.02, which read better there (docs/experiments.md, text embeddings)."""
    for e in embeddings:
        nn.init.normal_(e.weight, std=1.0)


class TokenEmbedding(nn.Module):
    """Image-token embedding: id + position (2D row/col for grids, 1D otherwise) + depth level.

    Tokens with ``levels`` ids per position (residual VQ depth, patch channels) are flattened
    position-major into ``positions * levels`` sequence steps, each knowing its position and level.
    """

    def __init__(self, vocab: int, dim: int, positions: int, grid: tuple[int, int] | None, levels: int, extra_ids: int = 0):
        super().__init__()
        self.tok = nn.Embedding(vocab + extra_ids, dim)
        self.grid, self.levels, self.positions = grid, levels, positions
        if grid is not None:
            self.row = nn.Embedding(grid[0], dim)
            self.col = nn.Embedding(grid[1], dim)
        else:
            self.pos = nn.Embedding(positions, dim)
        self.depth = nn.Embedding(levels, dim) if levels > 1 else None

    def position_embedding(self, steps: torch.Tensor) -> torch.Tensor:
        """Embedding of sequence steps (flattened position * levels + level), [n, dim]."""
        pos, level = steps // self.levels, steps % self.levels
        if self.grid is not None:
            e = self.row(pos // self.grid[1]) + self.col(pos % self.grid[1])
        else:
            e = self.pos(pos)
        if self.depth is not None:
            e = e + self.depth(level)
        return e

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """ids [B, n] at sequence steps start..start+n-1 -> [B, n, dim]."""
        steps = torch.arange(start, start + ids.shape[1], device=ids.device)
        return self.tok(ids) + self.position_embedding(steps)
