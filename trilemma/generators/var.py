"""VAR style next-scale generator (Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image
Generation via Next-Scale Prediction", arXiv:2404.02905).

A multi-scale tokenizer (``TokenSpec.scales``, e.g. msvq-f4-shapes: 1, 2, 3, 4, 6, 8) writes an
image as token maps coarse to fine, each the residual the coarser ones left. This transformer
predicts a whole map per step: every position of scale k is drawn at once, seeing all of scales
< k (a block-causal mask over scales in training; a KV cache across scales in sampling, where each
step feeds one scale's inputs and attends to everything cached), so an 8x8 image takes 6 passes
instead of DALL-E's 64.

The input for scale k is the map of everything drawn so far, brought to scale k's size: VAR sums
the tokenizer's code vectors of each coarser scale upsampled to the finest size and area-downsamples
the sum. A generator never sees a tokenizer, so here the code vectors are the generator's own
embedding of the ids (learned, of the same role). The first scale reads a start vector (the
pooled prompt); the prompt is also read by cross-attention in every block, padding never attended,
as in Parti and Muse. Position and scale embeddings tell each input where it stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from trilemma import registry
from trilemma.generators.base import Generator
from trilemma.generators.sampling import SamplingConfig, sample_logits
from trilemma.generators.text_encoder import TextEncoderMixin, TextEncoding
from trilemma.nn.transformer import Transformer, TransformerConfig, init_text_embeddings, init_weights
from trilemma.tokens import Tokens, TokenSpec


@dataclass
class VarConfig:
    dim: int = 256  # transformer width
    encoder_depth: int = 2  # prompt encoder blocks (bidirectional)
    depth: int = 4  # next-scale blocks (block-causal over scales + cross-attention to the prompt)
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    cond_drop_prob: float = 0.1  # rows trained on the empty prompt, for classifier-free guidance
    code_dim: int = 32  # width of the id embedding whose maps are summed across scales (VAR's code vectors)


@registry.register("generator", "var")
class Var(TextEncoderMixin, Generator):
    Config = VarConfig
    edits = True  # known ids are kept at their scale and position; later scales see them

    def __init__(self, config: VarConfig, spec: TokenSpec, text):
        super().__init__(spec, text)
        self.config = config
        self.scales = spec.scales
        self.offsets = [sum(s * s for s in self.scales[:k]) for k in range(len(self.scales) + 1)]
        blocks = lambda depth: TransformerConfig(config.dim, depth, config.heads, config.mlp_ratio, config.dropout)  # noqa: E731
        self._add_text_encoder(text.vocab_size, text.max_length, blocks(config.encoder_depth))
        self.transformer = Transformer(blocks(config.depth), context_dim=config.dim)
        self.code = nn.Embedding(spec.vocab_size, config.code_dim)
        self.code_in = nn.Linear(config.code_dim, config.dim)
        self.start = nn.Linear(config.dim, config.dim)  # pooled prompt -> the first scale's input
        self.pos = nn.Embedding(spec.max_tokens, config.dim)
        self.level = nn.Embedding(len(self.scales), config.dim)
        self.image_head = nn.Linear(config.dim, spec.vocab_size, bias=False)
        self.apply(init_weights)
        init_text_embeddings(self.text_emb, self.text_pos)
        level_of = torch.repeat_interleave(torch.arange(len(self.scales)), torch.tensor([s * s for s in self.scales]))
        self.register_buffer("level_of", level_of, persistent=False)  # scale index of every position

    @classmethod
    def check_spec(cls, spec: TokenSpec) -> None:
        super().check_spec(spec)
        if spec.scales is None or spec.levels != 1:
            raise ValueError("var predicts the token maps of a multi-scale tokenizer, coarse to fine; this tokenizer's "
                             "tokens have no scales: pick an msvq tokenizer (e.g. msvq-f4-shapes)")

    # ------------------------------------------------------------------ inputs

    def block_mask(self, length: int, device: torch.device) -> torch.Tensor:
        """[length, length]: position i may attend j when j's scale is not after i's."""
        level = self.level_of[:length].to(device)
        return level[:, None] >= level[None, :]

    def _code_map(self, ids: torch.Tensor, k: int) -> torch.Tensor:
        """Scale k's ids [B, s*s] -> their code vectors on the finest grid [B, code_dim, S, S]."""
        s, last = self.scales[k], self.scales[-1]
        e = rearrange(self.code(ids), "b (h w) c -> b c h w", h=s)
        return e if s == last else F.interpolate(e, size=(last, last), mode="bicubic", align_corners=False)

    def _scale_input(self, summed: torch.Tensor, k: int) -> torch.Tensor:
        """The sum of the coarser scales' code maps [B, code_dim, S, S] at scale k's size -> [B, s*s, dim]."""
        s = self.scales[k]
        x = summed if s == summed.shape[-1] else F.adaptive_avg_pool2d(summed, s)  # area downsampling
        return self.code_in(rearrange(x, "b c h w -> b (h w) c"))

    def _positions(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Add position and scale embeddings to scale k's inputs [B, s*s, dim]."""
        steps = torch.arange(self.offsets[k], self.offsets[k + 1], device=x.device)
        return x + self.pos(steps) + self.level(self.level_of[steps])

    def _first_input(self, memory: TextEncoding) -> torch.Tensor:
        """The first scale's inputs: the pooled prompt, at each of its positions [B, s0*s0, dim]."""
        start = self.start(self.pooled(memory))[:, None]
        return self._positions(start.expand(-1, self.scales[0] ** 2, -1), 0)

    def _inputs(self, ids: torch.Tensor, memory: TextEncoding) -> torch.Tensor:
        """Teacher forcing: the inputs of every scale from the true ids of the coarser ones [B, L, dim]."""
        parts, summed = [self._first_input(memory)], None
        for k in range(1, len(self.scales)):
            code = self._code_map(ids[:, self.offsets[k - 1] : self.offsets[k]], k - 1)
            summed = code if summed is None else summed + code
            parts.append(self._positions(self._scale_input(summed, k), k))
        return torch.cat(parts, 1)

    # ------------------------------------------------------------------ training

    def forward(self, image_ids: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy of every scale's ids [B, L] given the coarser ones and the prompt [B, T]."""
        memory = self.encode_text(self.drop_captions(text_ids)[0])
        h = self.transformer(self._inputs(image_ids, memory), context=memory.states, context_mask=memory.mask,
                             attn_mask=self.block_mask(image_ids.shape[1], image_ids.device))
        loss = F.cross_entropy(self.image_head(h).float().transpose(1, 2), image_ids)
        return {"loss": loss}

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, text_ids: torch.Tensor, sampling: SamplingConfig | None = None, known: torch.Tensor | None = None,
               use_cache: bool = True) -> Tokens:
        """Sample the token maps for text ids [B, T], one forward pass per scale (``sampling``:
        temperature, top_k, top_p, cfg_scale, seed). ``known`` ids (-1 elsewhere) are kept where
        given; the scales after see them. ``use_cache=False`` recomputes every scale's inputs through
        the block-causal mask each step (for checking the cache only)."""
        sampling, rows, gen = self.start_sampling(text_ids, sampling, known)
        b, device = text_ids.shape[0], text_ids.device
        memory = self.encode_text(rows)
        cache = self.transformer.new_cache() if use_cache else None
        out = torch.empty(b, self.image_len, dtype=torch.long, device=device)
        x, seen, summed = self._first_input(memory), None, None
        for k in range(len(self.scales)):
            lo, hi = self.offsets[k], self.offsets[k + 1]
            if cache is not None:
                h = self.transformer(x, context=memory.states, context_mask=memory.mask, cache=cache, max_len=self.image_len)
            else:
                seen = x if seen is None else torch.cat([seen, x], 1)
                h = self.transformer(seen, context=memory.states, context_mask=memory.mask,
                                     attn_mask=self.block_mask(hi, device))[:, lo:]
            logits = self.guide(self.image_head(h).float(), b, sampling.cfg_scale)
            ids = sample_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p, gen)
            out[:, lo:hi] = ids if known is None else torch.where(known[:, lo:hi] >= 0, known[:, lo:hi], ids)
            if k + 1 < len(self.scales):
                code = self._code_map(self.stack_rows(out[:, lo:hi], rows), k)
                summed = code if summed is None else summed + code
                x = self._positions(self._scale_input(summed, k + 1), k + 1)
        return Tokens(ids=out)


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("generator", name, "var", description, **fields)


_preset("var-shapes", "CPU: 2 encoder + 4 next-scale blocks x 256 wide, for msvq-f4-shapes (6 scales)",
        dim=256, encoder_depth=2, depth=4, heads=4)
_preset("var-tiny", "test size: 1 + 2 blocks x 64 wide", dim=64, encoder_depth=1, depth=2, heads=2, code_dim=16)
_preset("var-base", "GPU: 12 encoder + 16 next-scale blocks x 1024 wide (VAR-d16-like), for msvq-f16-256",
        dim=1024, encoder_depth=12, depth=16, heads=16)
