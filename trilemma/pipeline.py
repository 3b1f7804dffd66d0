"""Text -> tokens -> images: a tokenizer and a generator trained on its tokens, used together
(optionally decoding through a token-conditioned decoder instead of the tokenizer's own).

A generator or decoder checkpoint records the tokenizer it was trained on (path and weights hash);
loading a pipeline with any other tokenizer is refused with an error that says which one it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trilemma import checkpoint
from trilemma.generators.sampling import SamplingConfig


def check_compatible(tokenizer_spec: Any, generator_spec: Any) -> None:
    fields = ("kind", "vocab_size", "latent_dim", "max_tokens", "levels", "grid")
    diff = [f for f in fields if getattr(tokenizer_spec, f) != getattr(generator_spec, f)]
    if diff:
        detail = ", ".join(f"{f}: tokenizer {getattr(tokenizer_spec, f)} vs generator {getattr(generator_spec, f)}" for f in diff)
        raise ValueError(f"tokenizer and generator do not match ({detail}); use the tokenizer the generator was trained on")


def load_tokenizer(tokenizer_dir: str | Path, decoder_dir: str | Path | None = None) -> Any:
    """A tokenizer checkpoint; with ``decoder_dir``, decoding through that token-conditioned decoder
    (which must have been trained on this tokenizer)."""
    tok_dir = checkpoint.resolve_checkpoint(tokenizer_dir)
    tokenizer = checkpoint.load(tok_dir, kind="tokenizer")
    if decoder_dir is None:
        return tokenizer
    from trilemma.decoders.token_diffusion import DecodedBy

    dec_dir = checkpoint.resolve_checkpoint(decoder_dir)
    checkpoint.recorded_tokenizer(dec_dir, tok_dir, kind="decoder")  # the decoder's own tokenizer, or an error
    return DecodedBy(tokenizer, checkpoint.load(dec_dir, kind="decoder"))


class Pipeline:
    def __init__(self, tokenizer: Any, generator: Any):
        check_compatible(tokenizer.spec, generator.spec)
        self.tokenizer, self.generator, self.text = tokenizer, generator, generator.text

    @classmethod
    def load(cls, generator_dir: str | Path, tokenizer_dir: str | Path | None = None,
             decoder_dir: str | Path | None = None) -> "Pipeline":
        gen_dir = checkpoint.resolve_checkpoint(generator_dir)
        tokenizer = load_tokenizer(checkpoint.recorded_tokenizer(gen_dir, tokenizer_dir, kind="generator"), decoder_dir)
        return cls(tokenizer, checkpoint.load(gen_dir, kind="generator"))

    def to(self, device: torch.device | str) -> "Pipeline":
        self.tokenizer.to(device)
        self.generator.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @torch.no_grad()
    def __call__(self, prompts: list[str], sampling: SamplingConfig | None = None, batch_size: int = 64) -> torch.Tensor:
        """Images [len(prompts), 3, H, W] in [-1, 1], on the CPU. ``sampling`` goes to
        ``generator.sample``; the chunk starting at prompt ``s`` uses ``sampling.for_chunk(s)``
        (seed + s), so a large request stays reproducible."""
        sampling = sampling if sampling is not None else SamplingConfig()
        images = []
        for start in range(0, len(prompts), batch_size):
            text_ids = self.text.encode(prompts[start : start + batch_size]).to(self.device)
            tokens = self.generator.sample(text_ids, sampling.for_chunk(start))
            images.append(self.tokenizer.decode(tokens).clamp(-1, 1).float().cpu())
        return torch.cat(images)
