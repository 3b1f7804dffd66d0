"""DALL-E style decoder-only generator (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation").

One causal transformer over the concatenation [text tokens; image tokens]. Text and image keep
separate vocabularies: separate embeddings and separate output heads, so image positions can only
ever produce image ids (the logits are restricted to the image vocabulary by construction). The
loss weights text vs image prediction (DALL-E used 1/8 : 7/8). Residual/patch tokens with several
ids per position are flattened position-major, each step knowing its position and depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trilemma import registry
from trilemma.generators.base import Generator
from trilemma.generators.sampling import SamplingConfig, sample_logits
from trilemma.nn.transformer import TokenEmbedding, Transformer, TransformerConfig, init_text_embeddings, init_weights
from trilemma.tokens import Tokens


@dataclass
class DalleConfig:
    dim: int = 256  # transformer width
    depth: int = 6  # blocks
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    cond_drop_prob: float = 0.1  # rows trained on the empty prompt, for classifier-free guidance
    text_loss_weight: float = 0.125  # weight of text prediction vs image (DALL-E: 1/8)


@registry.register("generator", "dalle")
class Dalle(Generator):
    Config = DalleConfig

    def __init__(self, config: DalleConfig, spec, text):
        super().__init__(spec, text)
        self.config = config
        self.text_len = text.max_length
        self.text_emb = nn.Embedding(text.vocab_size, config.dim)
        self.text_pos = nn.Embedding(self.text_len, config.dim)
        self.image_emb = TokenEmbedding(spec.vocab_size, config.dim, spec.max_tokens, spec.grid, spec.levels)
        tcfg = TransformerConfig(config.dim, config.depth, config.heads, config.mlp_ratio, config.dropout)
        self.transformer = Transformer(tcfg)
        self.text_head = nn.Linear(config.dim, text.vocab_size, bias=False)
        self.image_head = nn.Linear(config.dim, spec.vocab_size, bias=False)
        self.apply(init_weights)
        init_text_embeddings(self.text_emb, self.text_pos)

    def _embed_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        return self.text_emb(text_ids) + self.text_pos(torch.arange(text_ids.shape[1], device=text_ids.device))

    def forward(self, image_ids: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher-forced losses for flat image ids [B, M] and text ids [B, L]."""
        text_ids, dropped = self.drop_captions(text_ids)
        x = torch.cat([self._embed_text(text_ids), self.image_emb(image_ids[:, :-1])], dim=1)
        h = self.transformer(x, causal=True)
        L = text_ids.shape[1]
        image_logits = self.image_head(h[:, L - 1 :]).float()
        image_loss = F.cross_entropy(image_logits.transpose(1, 2), image_ids)
        text_targets = text_ids[:, 1:].masked_fill(dropped[:, None], self.text.pad_id)
        text_logits = self.text_head(h[:, : L - 1]).float()
        if (text_targets != self.text.pad_id).any():
            text_loss = F.cross_entropy(text_logits.transpose(1, 2), text_targets, ignore_index=self.text.pad_id)
        else:
            text_loss = text_logits.sum() * 0.0
        w = self.config.text_loss_weight
        loss = (w * text_loss + image_loss) / (1 + w)
        return {"loss": loss, "image_loss": image_loss.detach(), "text_loss": text_loss.detach()}

    @torch.no_grad()
    def sample(self, text_ids: torch.Tensor, sampling: SamplingConfig | None = None, known: torch.Tensor | None = None,
               use_cache: bool = True) -> Tokens:
        """Sample image tokens for text ids [B, L] (``sampling``: temperature, top_k, top_p,
        cfg_scale, seed), one position at a time, every row sharing one KV cache. ``known`` ids
        (-1 elsewhere) are kept where given: each drawn token sees only the tokens before it.
        ``use_cache=False`` recomputes the whole prefix each step (for checking only)."""
        sampling, rows, gen = self.start_sampling(text_ids, sampling)
        b = text_ids.shape[0]
        known = self.check_known(known, b, sampling)
        prefix = self._embed_text(rows)
        length = self.sample_length(sampling)
        out = torch.empty(b, length, dtype=torch.long, device=text_ids.device)
        cache = self.transformer.new_cache() if use_cache else None
        h = self.transformer(prefix, causal=True, cache=cache, max_len=prefix.shape[1] + self.image_len)
        for j in range(length):
            logits = self.guide(self.image_head(h[:, -1]).float(), b, sampling.cfg_scale)
            out[:, j] = self.keep_known(sample_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p, gen), known, j)
            if j == length - 1:
                break
            if use_cache:
                h = self.transformer(self.image_emb(self.stack_rows(out[:, j : j + 1], rows), start=j), causal=True, cache=cache)
            else:
                so_far = self.image_emb(self.stack_rows(out[:, : j + 1], rows))
                h = self.transformer(torch.cat([prefix, so_far], 1), causal=True)
        return self.unflatten(out)


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("generator", name, "dalle", description, **fields)


_preset("dalle-shapes", "CPU: 4 blocks x 256 wide, for 32x32 shapes tokens", dim=256, depth=4, heads=4)
_preset("dalle-tiny", "test size: 2 blocks x 64 wide", dim=64, depth=2, heads=2)
_preset("dalle-base", "GPU: 24 blocks x 1024 wide (~300M), for 256x256 f16 tokens", dim=1024, depth=24, heads=16)
