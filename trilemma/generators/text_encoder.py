"""What the generators that cross-attend to text share (Parti, Muse; diffusion takes the encoder
alone): a bidirectional prompt encoder, and an image transformer reading it, with image embeddings
that have one extra input id (Parti's BOS, Muse's [MASK]) and a head over the image vocabulary.

Padding is never attended: the encoder's self-attention and every reader's attention take the
prompt's mask (``TextEncoding.mask``), so a caption reads the same however far it is padded.

A mixin, so its weights keep their top-level names (``text_emb``, ``text_pos``, ``encoder``,
``image_emb``, ``image_head``) in every generator's checkpoint.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from trilemma.nn.transformer import TokenEmbedding, Transformer, TransformerConfig


class TextEncoding(NamedTuple):
    """A prompt encoder's output: what readers attend to, and where they may."""

    states: torch.Tensor  # [B, L, dim]
    mask: torch.Tensor  # [B, L] bool: True at the caption's words and eos, False at padding


class TextEncoderMixin:
    def _add_text_conditioned_layers(self, config, spec, text, image_depth: int, name: str) -> None:
        """Prompt encoder (``config.encoder_depth`` blocks); the image transformer, attribute
        ``name`` (``image_depth`` blocks, cross-attending to the prompt); image embeddings with one
        extra id; the image head. In this order, which fixes the initial weights for a seed."""
        def blocks(depth: int) -> TransformerConfig:
            return TransformerConfig(config.dim, depth, config.heads, config.mlp_ratio, config.dropout)

        self._add_text_encoder(text.vocab_size, text.max_length, blocks(config.encoder_depth))
        setattr(self, name, Transformer(blocks(image_depth), context_dim=config.dim))
        self.image_emb = TokenEmbedding(spec.vocab_size, config.dim, spec.max_tokens, spec.grid, spec.levels, extra_ids=1)
        self.image_head = nn.Linear(config.dim, spec.vocab_size, bias=False)

    def _add_text_encoder(self, vocab_size: int, max_length: int, cfg: TransformerConfig) -> None:
        self.text_emb = nn.Embedding(vocab_size, cfg.dim)
        self.text_pos = nn.Embedding(max_length, cfg.dim)
        self.encoder = Transformer(cfg)

    def encode_text(self, text_ids: torch.Tensor) -> TextEncoding:
        """Text ids [B, L] -> encodings [B, L, dim] and the mask of real tokens (every position
        attends to every real one)."""
        mask = text_ids != self.text.pad_id
        if not mask.any(1).all():  # nothing to attend: the attention would be NaN
            raise ValueError(f"`text_ids` has a row of padding only (pad id {self.text.pad_id}); a prompt "
                             "holds at least its eos, as TextTokenizer.encode writes it")
        x = self.text_emb(text_ids) + self.text_pos(torch.arange(text_ids.shape[1], device=text_ids.device))
        return TextEncoding(self.encoder(x, key_mask=mask), mask)

    @staticmethod
    def pooled(encoding: TextEncoding) -> torch.Tensor:
        """The mean encoding over each prompt's real tokens [B, dim] (padding left out)."""
        weights = encoding.mask.to(encoding.states.dtype)
        return torch.einsum("bld,bl->bd", encoding.states, weights) / weights.sum(1, keepdim=True)
