"""Muse style masked generator (Chang et al. 2023, "Muse: Text-To-Image Generation via Masked
Generative Transformers"; decoding from MaskGIT, Chang et al. 2022).

A bidirectional transformer encodes the prompt; a bidirectional image transformer sees the image
tokens with some replaced by a [MASK] id and cross-attends to the prompt (never to its padding).
Training masks a fraction ``mask_schedule(r)`` of the tokens, r ~ U(0, 1), and predicts the masked
ones. Sampling starts from all-[MASK] and, in ``steps`` parallel steps, samples every masked token
and keeps the most confident, re-masking the rest on the same cosine schedule: a whole image in a
handful of forward passes instead of one per token. Residual/patch tokens with several ids per
position are flattened position-major, each step knowing its position and depth, as in the other
generators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trilemma import registry
from trilemma.generators.base import Generator
from trilemma.generators.sampling import SamplingConfig, mask_schedule, masked_count, random_mask, remask_least_confident, sample_logits
from trilemma.generators.text_encoder import TextEncoderMixin, TextEncoding
from trilemma.nn.transformer import KVCache, init_text_embeddings, init_weights
from trilemma.tokens import Tokens


@dataclass
class MaskedConfig:
    """What the masked families share (Muse, MAR): a prompt encoder, a bidirectional image
    transformer reading it, trained on a masking schedule and sampled in ``steps``."""

    encoder_depth: int = 2  # prompt encoder blocks
    depth: int = 4  # image transformer blocks (bidirectional + cross-attention)
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    cond_drop_prob: float = 0.1  # rows trained on the empty prompt, for classifier-free guidance
    schedule: str = "cosine"  # fraction masked vs progress: cosine, linear or square
    steps: int = 8  # default decoding steps (sampling option ``steps`` overrides)


@dataclass
class MuseConfig(MaskedConfig):
    dim: int = 256  # width of encoder and image transformer
    choice_temperature: float = 4.5  # Gumbel noise on the keep/re-mask choice, annealed to 0


@registry.register("generator", "muse")
class Muse(TextEncoderMixin, Generator):
    Config = MuseConfig
    edits = True  # no sampling.budget: every token of the image is drawn at once
    compiles = True  # _logits, one pass

    def __init__(self, config: MuseConfig, spec, text):
        super().__init__(spec, text)
        mask_schedule(0.5, config.schedule)  # an unknown schedule fails here, not mid-training
        self.config = config
        self.mask_id = spec.vocab_size  # one extra input id: [MASK]
        self._add_text_conditioned_layers(config, spec, text, config.depth, name="transformer")
        self.apply(init_weights)
        init_text_embeddings(self.text_emb, self.text_pos)

    def _logits(self, ids: torch.Tensor, memory: TextEncoding, cache: KVCache | None = None) -> torch.Tensor:
        h = self.transformer(self.image_emb(ids), context=memory.states, context_mask=memory.mask, cache=cache)
        return self.image_head(h).float()

    def forward(self, image_ids: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Masked-token loss for flat image ids [B, M] and text ids [B, L]."""
        text_ids, _ = self.drop_captions(text_ids)
        b, m = image_ids.shape
        masked = random_mask(b, m, self.config.schedule, image_ids.device)
        logits = self._logits(image_ids.masked_fill(masked, self.mask_id), self.encode_text(text_ids))
        loss = F.cross_entropy(logits[masked], image_ids[masked])
        return {"loss": loss, "masked_fraction": masked.float().mean().detach()}

    @torch.no_grad()
    def sample(self, text_ids: torch.Tensor, sampling: SamplingConfig | None = None,
               known: torch.Tensor | None = None) -> Tokens:
        """Sample image tokens for text ids [B, L] in ``sampling.steps`` parallel decoding steps
        (default ``config.steps``); also temperature, top_k, top_p, cfg_scale, seed.

        Each step samples every masked token; the least confident are re-masked so that the count
        still masked follows the schedule. Temperature 0 is greedy and fully deterministic; above
        0 the keep/re-mask choice also gets Gumbel noise (``choice_temperature``, annealed to 0).
        ``known`` ids (-1 elsewhere) start unmasked and stay: only the rest is drawn, seeing all of them.
        """
        sampling, rows, gen = self.start_sampling(text_ids, sampling, known)
        b = text_ids.shape[0]
        ids = torch.full((b, self.image_len), self.mask_id, dtype=torch.long, device=text_ids.device)
        if known is not None:
            ids = torch.where(known >= 0, known, ids)
        total = int((ids == self.mask_id).sum(1).max())  # the schedule runs over the tokens to draw
        steps = min(sampling.steps or self.config.steps, max(total, 1))
        memory = self.encode_text(rows)
        cache = self.transformer.new_cache(cross_only=True)  # the prompt's keys and values, once per request
        for step in range(steps):
            masked = ids == self.mask_id
            logits = self.guide(self.run_step(self._logits, self.stack_rows(ids, rows), memory, cache), b,
                                sampling.cfg_scale)
            drawn = sample_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p, gen)
            confidence = logits.softmax(-1).gather(-1, drawn[..., None])[..., 0]
            drawn = torch.where(masked, drawn, ids)
            count = masked_count(step, steps, total, int(masked.sum(1).max()), self.config.schedule)
            noise = self.config.choice_temperature * (1 - (step + 1) / steps) if sampling.temperature > 0 else 0.0
            ids = drawn.masked_fill(remask_least_confident(confidence, masked, count, noise, gen), self.mask_id)
        return self.unflatten(ids)


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("generator", name, "muse", description, **fields)


_preset("muse-shapes", "CPU: 2 encoder + 4 image blocks x 256 wide, 8 decoding steps", dim=256, encoder_depth=2, depth=4, heads=4)
_preset("muse-tiny", "test size: 1 + 2 blocks x 64 wide", dim=64, encoder_depth=1, depth=2, heads=2)
_preset("muse-base", "GPU: 12 encoder + 24 image blocks x 1024 wide, 12 decoding steps", dim=1024, encoder_depth=12, depth=24, heads=16, steps=12)
