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
from trilemma.generators.sampling import cfg_combine, drop_condition, make_generator, sample_logits
from trilemma.nn.transformer import TokenEmbedding, Transformer, TransformerConfig, init_weights
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
        self.image_len = spec.max_tokens * spec.levels
        self.text_emb = nn.Embedding(text.vocab_size, config.dim)
        self.text_pos = nn.Embedding(self.text_len, config.dim)
        self.image_emb = TokenEmbedding(spec.vocab_size, config.dim, spec.max_tokens, spec.grid, spec.levels)
        tcfg = TransformerConfig(config.dim, config.depth, config.heads, config.mlp_ratio, config.dropout)
        self.transformer = Transformer(tcfg)
        self.text_head = nn.Linear(config.dim, text.vocab_size, bias=False)
        self.image_head = nn.Linear(config.dim, spec.vocab_size, bias=False)
        self.apply(init_weights)

    def _embed_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        return self.text_emb(text_ids) + self.text_pos(torch.arange(text_ids.shape[1], device=text_ids.device))

    def forward(self, image_ids: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher-forced losses for flat image ids [B, M] and text ids [B, L]."""
        if self.training and self.config.cond_drop_prob > 0:
            text_ids, dropped = drop_condition(text_ids, self.null_text(1, text_ids.device)[0], self.config.cond_drop_prob)
        else:
            dropped = torch.zeros(text_ids.shape[0], dtype=torch.bool, device=text_ids.device)
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

    def _guided(self, logits: torch.Tensor, batch: int, scale: float) -> torch.Tensor:
        if logits.shape[0] == batch:
            return logits
        return cfg_combine(logits[:batch], logits[batch:], scale)

    @torch.no_grad()
    def sample(self, text_ids: torch.Tensor, use_cache: bool = True, **sampling: Any) -> Tokens:
        """Sample image tokens for text ids [B, L]. Options: temperature, top_k, top_p, cfg_scale, seed.

        With cfg_scale != 1 the conditional and unconditional rows run stacked in one batch sharing
        one KV cache. ``use_cache=False`` recomputes the whole prefix each step (for checking only).
        """
        cfg = self.sampling_config(**sampling)
        self.eval()
        b, device = text_ids.shape[0], text_ids.device
        gen = make_generator(cfg.seed, device)
        rows = text_ids if cfg.cfg_scale == 1 else torch.cat([text_ids, self.null_text(b, device)])
        prefix = self._embed_text(rows)
        out = torch.empty(b, self.image_len, dtype=torch.long, device=device)
        cache = self.transformer.new_cache() if use_cache else None
        h = self.transformer(prefix, causal=True, cache=cache, max_len=prefix.shape[1] + self.image_len)
        for j in range(self.image_len):
            logits = self._guided(self.image_head(h[:, -1]).float(), b, cfg.cfg_scale)
            out[:, j] = sample_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, gen)
            if j == self.image_len - 1:
                break
            step_ids = out[:, j : j + 1] if rows.shape[0] == b else out[:, j : j + 1].repeat(2, 1)
            if use_cache:
                h = self.transformer(self.image_emb(step_ids, start=j), causal=True, cache=cache)
            else:
                so_far = out[:, : j + 1] if rows.shape[0] == b else out[:, : j + 1].repeat(2, 1)
                h = self.transformer(torch.cat([prefix, self.image_emb(so_far)], 1), causal=True)
        return self.unflatten(out)


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("generator", name, "dalle", description, **fields)


_preset("dalle-shapes", "CPU: 4 blocks x 256 wide, for 32x32 shapes tokens", dim=256, depth=4, heads=4)
_preset("dalle-tiny", "test size: 2 blocks x 64 wide", dim=64, depth=2, heads=2)
_preset("dalle-base", "GPU: 24 blocks x 1024 wide (~300M), for 256x256 f16 tokens", dim=1024, depth=24, heads=16)
