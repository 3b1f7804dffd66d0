"""What the generators of continuous latents share (latent diffusion, MAR): the latents normalised to
a zero mean per channel and unit overall spread, by a mean and scale measured on the training set
(``fit``) and saved with the weights as buffers (``latent_mean``, ``latent_scale``), so a model
learns in units it can rely on and hands back the tokenizer's own units.

One scale for all channels, as Stable Diffusion's ``scaling_factor``: the channels keep their
relative spread.

A mixin, so its buffers keep their top-level names in every generator's checkpoint.
"""

from __future__ import annotations

import torch

from trilemma.tokens import Tokens


class LatentNormalisationMixin:
    def _add_latent_normalisation(self, latent_dim: int) -> None:
        """The buffers ``fit`` measures: identity (mean 0, scale 1) until it runs."""
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_scale", torch.ones(()))

    def token_latents(self, tokens: Tokens) -> torch.Tensor:
        """The latents [B, N, D] of ``tokens``, refused when they carry only ids."""
        if tokens.latents is None:
            raise ValueError(f"{self.registry_name} needs continuous latents; these tokens carry only ids")
        return tokens.latents

    @torch.no_grad()
    def fit(self, tokens: Tokens) -> None:
        """Measure the training latents' per-channel mean and overall 1 / std."""
        latents = self.token_latents(tokens).float()
        mean = latents.mean(dim=(0, 1))
        std = (latents - mean).std()
        self.latent_mean.copy_(mean)
        self.latent_scale.copy_(1.0 / std.clamp_min(1e-6))

    def normalise(self, tokens: Tokens) -> torch.Tensor:
        """Tokens -> normalised latents [B, N, D]."""
        return (self.token_latents(tokens).float() - self.latent_mean) * self.latent_scale

    def to_tokens(self, x: torch.Tensor) -> Tokens:
        """Normalised latents [B, N, D] -> tokens in the tokenizer's units (``normalise`` undone)."""
        return Tokens(latents=x / self.latent_scale + self.latent_mean)
