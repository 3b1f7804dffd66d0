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
from trilemma.generators.autoregressive_loop import AutoregressiveGenerator, Decoding
from trilemma.nn.transformer import TokenEmbedding, Transformer, TransformerConfig, init_text_embeddings, init_weights


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
class Dalle(AutoregressiveGenerator):
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

    # ------------------------------------------------------------------ sampling (autoregressive_loop)

    def start_decoding(self, rows: torch.Tensor, use_cache: bool) -> tuple[Decoding, torch.Tensor]:
        """The prompt rows through the transformer (into the cache): the last position predicts image id 0."""
        prefix = self._embed_text(rows)
        cache = self.transformer.new_cache() if use_cache else None
        h = self.transformer(prefix, causal=True, cache=cache, max_len=prefix.shape[1] + self.image_len)
        return Decoding(prefix, cache), h

    def decode_step(self, state: Decoding, drawn: torch.Tensor) -> torch.Tensor:
        """Image ids drawn so far [R, j] after the prompt: only the newest into the cache, or all."""
        j = drawn.shape[1]
        if state.cache is not None:
            return self.transformer(self.image_emb(drawn[:, -1:], start=j - 1), causal=True, cache=state.cache)
        return self.transformer(torch.cat([state.context, self.image_emb(drawn)], 1), causal=True)


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("generator", name, "dalle", description, **fields)


_preset("dalle-shapes", "CPU: 4 blocks x 256 wide, for 32x32 shapes tokens", dim=256, depth=4, heads=4)
_preset("dalle-tiny", "test size: 2 blocks x 64 wide", dim=64, depth=2, heads=2)
_preset("dalle-base", "GPU: 24 blocks x 1024 wide (~300M), for 256x256 f16 tokens", dim=1024, depth=24, heads=16)
