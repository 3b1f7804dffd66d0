"""The bidirectional prompt encoder shared by the generators that cross-attend to text (Parti, Muse).

A mixin, so its weights keep their top-level names (``text_emb``, ``text_pos``, ``encoder``) in
every generator's checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from trilemma.nn.transformer import Transformer, TransformerConfig


class TextEncoderMixin:
    def _add_text_encoder(self, vocab_size: int, max_length: int, cfg: TransformerConfig) -> None:
        self.text_emb = nn.Embedding(vocab_size, cfg.dim)
        self.text_pos = nn.Embedding(max_length, cfg.dim)
        self.encoder = Transformer(cfg)

    def encode_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        """Text ids [B, L] -> encodings [B, L, dim] (every position attends to every other)."""
        x = self.text_emb(text_ids) + self.text_pos(torch.arange(text_ids.shape[1], device=text_ids.device))
        return self.encoder(x)
