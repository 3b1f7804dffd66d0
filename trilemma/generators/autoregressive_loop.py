"""The decode loop of the autoregressive generators (DALL-E, Parti): image tokens drawn one flat
position at a time, each from the guided logits of what came before, every prompt row (and, when
guided, its empty-prompt twin) sharing one KV cache.

A family supplies its network's two steps over its own cache, and an ``image_head`` over the image
vocabulary; the loop here does the rest (guidance, drawing, the ids kept when editing, the length
``sampling.budget`` asks for, the output):

    start_decoding(rows, use_cache) -> (state, h)   encode the condition; h [R, n, dim] predicts position 0
    decode_step(state, drawn) -> h                  feed the ids drawn so far [R, j]; h predicts position j

``decode_step`` is the per-token work: ``compile_steps`` runs it through ``torch.compile``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from trilemma.generators.base import Generator
from trilemma.generators.sampling import SamplingConfig, sample_logits
from trilemma.nn.transformer import KVCache
from trilemma.tokens import Tokens


class Decoding(NamedTuple):
    """What a decoder reads between steps besides the image ids: the condition (``context``:
    DALL-E's embedded prompt, Parti's prompt encoding), the KV cache (None: every step
    recomputes the whole prefix, for checking the cache only) and where the context may be
    attended (``context_mask``: Parti's prompt without its padding; None: everywhere)."""

    context: torch.Tensor
    cache: KVCache | None
    context_mask: torch.Tensor | None = None


class AutoregressiveGenerator(Generator):
    takes_budget = True  # drawn in order: the first sampling.budget tokens of ordered 1D tokens decode
    edits = True
    compiles = True  # decode_step

    def start_decoding(self, rows: torch.Tensor, use_cache: bool) -> tuple[Decoding, torch.Tensor]:
        raise NotImplementedError

    def decode_step(self, state: Decoding, drawn: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, text_ids: torch.Tensor, sampling: SamplingConfig | None = None, known: torch.Tensor | None = None,
               use_cache: bool = True) -> Tokens:
        """Sample image tokens for text ids [B, L] (``sampling``: temperature, top_k, top_p,
        cfg_scale, seed, budget), one position at a time. ``known`` ids (-1 elsewhere) are kept
        where given: each drawn token sees only the tokens before it. ``use_cache=False``
        recomputes the whole prefix each step (for checking only)."""
        sampling, rows, gen = self.start_sampling(text_ids, sampling, known)
        b = text_ids.shape[0]
        length = (sampling.budget or self.spec.max_tokens) * self.spec.levels
        out = torch.empty(b, length, dtype=torch.long, device=text_ids.device)
        state, h = self.start_decoding(rows, use_cache)
        for j in range(length):
            logits = self.guide(self.image_head(h[:, -1]).float(), b, sampling.cfg_scale)
            ids = sample_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p, gen)
            out[:, j] = ids if known is None else torch.where(known[:, j] >= 0, known[:, j], ids)
            if j < length - 1:
                h = self.run_step(self.decode_step, state, self.stack_rows(out[:, : j + 1], rows))
        return self.unflatten(out)
