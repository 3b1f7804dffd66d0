"""Parti style encoder-decoder generator (Yu et al. 2022, "Scaling Autoregressive Models for
Content-Rich Text-to-Image Generation").

A bidirectional transformer encodes the prompt once; a causal transformer decodes image tokens,
cross-attending to the encoding. At sampling time the encoder runs once per prompt and every
decoder layer's cross-attention keys/values are cached with its self-attention cache. An empty
prompt encodes the null condition used for classifier-free guidance.
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
from trilemma.generators.text_encoder import TextEncoderMixin
from trilemma.nn.transformer import TokenEmbedding, Transformer, TransformerConfig, init_weights
from trilemma.tokens import Tokens


@dataclass
class PartiConfig:
    dim: int = 256  # width of encoder and decoder
    encoder_depth: int = 2  # text encoder blocks (bidirectional)
    decoder_depth: int = 4  # image decoder blocks (causal + cross-attention)
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    cond_drop_prob: float = 0.1  # rows trained on the empty prompt, for classifier-free guidance


@registry.register("generator", "parti")
class Parti(TextEncoderMixin, Generator):
    Config = PartiConfig

    def __init__(self, config: PartiConfig, spec, text):
        super().__init__(spec, text)
        self.config = config
        self.image_len = spec.max_tokens * spec.levels
        self.bos = spec.vocab_size  # one extra input id starts every image
        mk = lambda depth: TransformerConfig(config.dim, depth, config.heads, config.mlp_ratio, config.dropout)  # noqa: E731
        self._add_text_encoder(text.vocab_size, text.max_length, mk(config.encoder_depth))
        self.decoder = Transformer(mk(config.decoder_depth), context_dim=config.dim)
        self.image_emb = TokenEmbedding(spec.vocab_size, config.dim, spec.max_tokens, spec.grid, spec.levels, extra_ids=1)
        self.image_head = nn.Linear(config.dim, spec.vocab_size, bias=False)
        self.apply(init_weights)

    def forward(self, image_ids: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.training and self.config.cond_drop_prob > 0:
            text_ids, _ = drop_condition(text_ids, self.null_text(1, text_ids.device)[0], self.config.cond_drop_prob)
        memory = self.encode_text(text_ids)
        bos = torch.full_like(image_ids[:, :1], self.bos)
        h = self.decoder(self.image_emb(torch.cat([bos, image_ids[:, :-1]], 1)), context=memory, causal=True)
        loss = F.cross_entropy(self.image_head(h).float().transpose(1, 2), image_ids)
        return {"loss": loss}

    @torch.no_grad()
    def sample(self, text_ids: torch.Tensor, use_cache: bool = True, **sampling: Any) -> Tokens:
        """Sample image tokens for text ids [B, L]. Options: temperature, top_k, top_p, cfg_scale, seed.

        The conditional and (for cfg_scale != 1) unconditional prompts are encoded once, stacked in
        one batch, and share one cache (self-attention and cross-attention keys/values).
        """
        cfg = self.sampling_config(**sampling)
        self.eval()
        b, device = text_ids.shape[0], text_ids.device
        gen = make_generator(cfg.seed, device)
        rows = text_ids if cfg.cfg_scale == 1 else torch.cat([text_ids, self.null_text(b, device)])
        memory = self.encode_text(rows)
        n = rows.shape[0]
        seq = torch.full((n, 1), self.bos, dtype=torch.long, device=device)
        out = torch.empty(b, self.image_len, dtype=torch.long, device=device)
        cache = self.decoder.new_cache() if use_cache else None
        for j in range(self.image_len):
            if use_cache:
                h = self.decoder(self.image_emb(seq[:, -1:], start=j), context=memory, causal=True, cache=cache, max_len=self.image_len)
            else:
                h = self.decoder(self.image_emb(seq), context=memory, causal=True)
            logits = self.image_head(h[:, -1]).float()
            if n != b:
                logits = cfg_combine(logits[:b], logits[b:], cfg.cfg_scale)
            out[:, j] = sample_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, gen)
            step = out[:, j : j + 1] if n == b else out[:, j : j + 1].repeat(2, 1)
            seq = torch.cat([seq, step], 1)
        return self.unflatten(out)


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("generator", name, "parti", description, **fields)


_preset("parti-shapes", "CPU: 2 encoder + 4 decoder blocks x 256 wide", dim=256, encoder_depth=2, decoder_depth=4, heads=4)
_preset("parti-tiny", "test size: 1 + 2 blocks x 64 wide", dim=64, encoder_depth=1, decoder_depth=2, heads=2)
_preset("parti-base", "GPU: 12 encoder + 24 decoder blocks x 1024 wide", dim=1024, encoder_depth=12, decoder_depth=24, heads=16)
