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

from trilemma import registry
from trilemma.generators.base import Generator
from trilemma.generators.sampling import SamplingConfig, sample_logits
from trilemma.generators.text_encoder import TextEncoderMixin
from trilemma.nn.transformer import init_text_embeddings, init_weights
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
        self.bos = spec.vocab_size  # one extra input id starts every image
        self._add_text_conditioned_layers(config, spec, text, config.decoder_depth, name="decoder")
        self.apply(init_weights)
        init_text_embeddings(self.text_emb, self.text_pos)

    def forward(self, image_ids: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        memory = self.encode_text(self.drop_captions(text_ids)[0])
        bos = torch.full_like(image_ids[:, :1], self.bos)
        h = self.decoder(self.image_emb(torch.cat([bos, image_ids[:, :-1]], 1)), context=memory, causal=True)
        loss = F.cross_entropy(self.image_head(h).float().transpose(1, 2), image_ids)
        return {"loss": loss}

    @torch.no_grad()
    def sample(self, text_ids: torch.Tensor, sampling: SamplingConfig | None = None, known: torch.Tensor | None = None,
               use_cache: bool = True) -> Tokens:
        """Sample image tokens for text ids [B, L] (``sampling``: temperature, top_k, top_p,
        cfg_scale, seed). Every prompt row (conditional and, when guided, empty) is encoded once and
        shares one cache: self-attention and cross-attention keys/values. ``known`` ids (-1
        elsewhere) are kept where given: each drawn token sees only the tokens before it."""
        sampling, rows, gen = self.start_sampling(text_ids, sampling)
        b = text_ids.shape[0]
        known = self.check_known(known, b, sampling)
        memory = self.encode_text(rows)
        seq = torch.full((rows.shape[0], 1), self.bos, dtype=torch.long, device=text_ids.device)
        length = self.sample_length(sampling)
        out = torch.empty(b, length, dtype=torch.long, device=text_ids.device)
        cache = self.decoder.new_cache() if use_cache else None
        for j in range(length):
            if use_cache:
                h = self.decoder(self.image_emb(seq[:, -1:], start=j), context=memory, causal=True, cache=cache, max_len=self.image_len)
            else:
                h = self.decoder(self.image_emb(seq), context=memory, causal=True)
            logits = self.guide(self.image_head(h[:, -1]).float(), b, sampling.cfg_scale)
            out[:, j] = self.keep_known(sample_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p, gen), known, j)
            seq = torch.cat([seq, self.stack_rows(out[:, j : j + 1], rows)], 1)
        return self.unflatten(out)


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("generator", name, "parti", description, **fields)


_preset("parti-shapes", "CPU: 2 encoder + 4 decoder blocks x 256 wide", dim=256, encoder_depth=2, decoder_depth=4, heads=4)
_preset("parti-tiny", "test size: 1 + 2 blocks x 64 wide", dim=64, encoder_depth=1, decoder_depth=2, heads=2)
_preset("parti-base", "GPU: 12 encoder + 24 decoder blocks x 1024 wide", dim=1024, encoder_depth=12, decoder_depth=24, heads=16)
