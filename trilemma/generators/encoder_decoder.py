"""Parti style encoder-decoder generator (Yu et al. 2022, "Scaling Autoregressive Models for
Content-Rich Text-to-Image Generation").

A bidirectional transformer encodes the prompt once; a causal transformer decodes image tokens,
cross-attending to the encoding (never to its padding). At sampling time the encoder runs once per
prompt and every decoder layer's cross-attention keys/values are cached with its self-attention
cache. An empty prompt encodes the null condition used for classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trilemma import registry
from trilemma.generators.autoregressive_loop import AutoregressiveGenerator, Decoding
from trilemma.generators.text_encoder import TextEncoderMixin
from trilemma.nn.transformer import init_text_embeddings, init_weights


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
class Parti(TextEncoderMixin, AutoregressiveGenerator):
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
        h = self.decoder(self.image_emb(torch.cat([bos, image_ids[:, :-1]], 1)), context=memory.states,
                         context_mask=memory.mask, causal=True)
        loss = F.cross_entropy(self.image_head(h).float().transpose(1, 2), image_ids)
        return {"loss": loss}

    # ------------------------------------------------------------------ sampling (autoregressive_loop)

    def start_decoding(self, rows: torch.Tensor, use_cache: bool) -> tuple[Decoding, torch.Tensor]:
        """Every prompt row encoded once; BOS through the decoder: it predicts image id 0. The cache
        keeps self-attention and cross-attention keys/values."""
        memory = self.encode_text(rows)
        bos = torch.full((rows.shape[0], 1), self.bos, dtype=torch.long, device=rows.device)
        cache = self.decoder.new_cache() if use_cache else None
        h = self.decoder(self.image_emb(bos), context=memory.states, context_mask=memory.mask, causal=True,
                         cache=cache, max_len=self.image_len)
        return Decoding(memory.states, cache, memory.mask), h

    def decode_step(self, state: Decoding, drawn: torch.Tensor) -> torch.Tensor:
        """Image ids drawn so far [R, j] after BOS: only the newest into the cache, or all."""
        j = drawn.shape[1]
        if state.cache is not None:
            return self.decoder(self.image_emb(drawn[:, -1:], start=j), context=state.context,
                                context_mask=state.context_mask, causal=True, cache=state.cache)
        seq = torch.cat([torch.full_like(drawn[:, :1], self.bos), drawn], 1)
        return self.decoder(self.image_emb(seq), context=state.context, context_mask=state.context_mask, causal=True)


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("generator", name, "parti", description, **fields)


_preset("parti-shapes", "CPU: 2 encoder + 4 decoder blocks x 256 wide", dim=256, encoder_depth=2, decoder_depth=4, heads=4)
_preset("parti-tiny", "test size: 1 + 2 blocks x 64 wide", dim=64, encoder_depth=1, decoder_depth=2, heads=2)
_preset("parti-base", "GPU: 12 encoder + 24 decoder blocks x 1024 wide", dim=1024, encoder_depth=12, decoder_depth=24, heads=16)
