"""A pretrained diffusers autoencoder as a continuous trilemma tokenizer (made by ``interop.import_diffusers``).

The autoencoders latent diffusion models are trained on: ``AutoencoderKL`` (Stable Diffusion 1.x /
2.x, SDXL, SD3 / 3.5, FLUX.1), ``AutoencoderKLFlux2`` (FLUX.2), ``AutoencoderDC`` (DC-AE, SANA; 32x
and 64x), ``AutoencoderTiny`` (TAESD and its kin) and ``ConsistencyDecoderVAE`` (OpenAI's consistency
decoder, with the Stable Diffusion encoder). The diffusers model is wrapped whole as the submodule
``ae``; ``config.json`` keeps its config as plain JSON (``model_config``), rebuilt with
``from_config`` on load, so our ``model.safetensors`` holds its weights under ``ae.``.

Tokens are the latents the model's own pipelines give their denoiser, one token per latent pixel
in raster order (``latent_dim`` = channels):
- ``AutoencoderKL``: the posterior's mean (or a draw with ``sample``), then ``(z - latents_mean) *
  scaling_factor / latents_std`` where the config has per-channel statistics (SDXL-style), else
  ``(z - shift_factor) * scaling_factor`` (``shift_factor`` 0 for SD 1.x / 2.x / SDXL; SD3 and FLUX.1
  set one); decoding inverts it;
- ``AutoencoderKLFlux2``: the mean, 2x2 patches folded into channels (32 -> 128), normalised by
  the model's batch-norm running statistics, as FLUX.2's pipeline does;
- ``AutoencoderDC``: ``latent * scaling_factor`` (SANA); ``AutoencoderTiny``: ``(latents -
  shift_factor) * scaling_factor`` (1 and 0 for TAESD, whose latents come scaled);
- ``ConsistencyDecoderVAE``: the mean times ``scaling_factor``; decoding runs its consistency
  decoder for ``decode_steps`` steps from noise drawn from ``decode_seed``, so a decode repeats.

``decoder_config``: a ``ConsistencyDecoderVAE`` that decodes in place of an ``AutoencoderKL``'s own
decoder (OpenAI's consistency decoder for the Stable Diffusion VAE); held as the submodule
``consistency``, it takes the same scaled latents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange

from trilemma import registry
from trilemma.tokenizers.base import Tokenizer, TokenizerOutput
from trilemma.tokenizers.diffusers_files import (check_image_size, check_pixel_range, check_rgb, downsampling,
                                                  from_config, from_model, to_model)
from trilemma.tokens import Prompt, Tokens, TokenSpec

POSTERIOR = ("AutoencoderKL", "AutoencoderKLFlux2", "ConsistencyDecoderVAE")  # encode to a distribution
CLASSES = (*POSTERIOR, "AutoencoderDC", "AutoencoderTiny")


@dataclass
class DiffusersAEConfig:
    image_size: int = 256  # square input resolution; a multiple of the model's downsampling factor
    class_name: str = "AutoencoderKL"  # the diffusers class: one of CLASSES
    model_config: dict[str, Any] = field(default_factory=dict)  # its config (JSON), {} = the class defaults
    pixel_range: tuple[float, float] = (-1.0, 1.0)  # what the model takes
    sample: bool = False  # encode draws from the posterior (KL classes) instead of taking its mean
    decoder_config: dict[str, Any] = field(default_factory=dict)  # a ConsistencyDecoderVAE decoding instead; {} = none
    decode_steps: int = 2  # consistency decoder steps (its pipelines' default)
    decode_seed: int = 0  # the consistency decoder's noise: one seed, so decoding is a function


@registry.register("tokenizer", "diffusers-ae")
class DiffusersAE(Tokenizer):
    """A diffusers image autoencoder behind our Tokenizer interface: continuous latents on a grid."""

    Config = DiffusersAEConfig
    any_size = True

    def __init__(self, config: DiffusersAEConfig):
        super().__init__()
        self.config = config
        name = config.class_name
        if name not in CLASSES:
            raise ValueError(f"`class_name` {name!r}: diffusers-ae wraps {', '.join(CLASSES)}")
        if config.sample and name not in POSTERIOR:
            raise ValueError(f"`sample`: {name} encodes to one latent, not a distribution to sample; "
                             f"only {', '.join(POSTERIOR)} do")
        check_pixel_range(config.pixel_range)
        self.ae = from_config(name, dict(config.model_config))
        check_rgb(self.ae, name)
        c = self.ae.config
        self.consistency = None
        if config.decoder_config:
            if name != "AutoencoderKL":
                raise ValueError(f"`decoder_config`: a consistency decoder replaces an AutoencoderKL's decoder, not {name}'s")
            self.consistency = from_config("ConsistencyDecoderVAE", dict(config.decoder_config))
            if self.consistency.config.latent_channels != c.latent_channels:
                raise ValueError(f"`decoder_config`: the consistency decoder takes {self.consistency.config.latent_channels} "
                                 f"latent channels, this AutoencoderKL makes {c.latent_channels}")
            if self.consistency.config.scaling_factor != c.scaling_factor or c.get("shift_factor") or c.get("latents_mean"):
                raise ValueError("`decoder_config`: the consistency decoder's latents are scaled by "
                                 f"{self.consistency.config.scaling_factor} alone, this AutoencoderKL's otherwise")
        if config.decode_steps < 1:
            raise ValueError(f"`decode_steps` must be >= 1, got {config.decode_steps}")
        self.patch = tuple(c.patch_size) if name == "AutoencoderKLFlux2" else (1, 1)
        levels = len(c.encoder_block_out_channels if name in ("AutoencoderDC", "AutoencoderTiny") else c.block_out_channels)
        self.factor = downsampling(levels) * self.patch[0]
        check_image_size(config.image_size, self.factor, name)
        self.grid = (config.image_size // self.factor,) * 2

    @property
    def spec(self) -> TokenSpec:
        h, w = self.grid
        channels = self.ae.config.latent_channels * self.patch[0] * self.patch[1]
        return TokenSpec("continuous", h * w, latent_dim=channels, grid=self.grid)

    def _scaling(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale), each [C, 1, 1]: the pipeline's latent = (model latent - shift) * scale."""
        c, name = self.ae.config, self.config.class_name
        one = next(self.ae.parameters()).new_ones(())
        if name == "AutoencoderKLFlux2":
            bn = self.ae.bn
            return bn.running_mean[:, None, None], torch.rsqrt(bn.running_var + c.batch_norm_eps)[:, None, None]
        if name == "AutoencoderKL" and c.get("latents_mean") is not None and c.get("latents_std") is not None:
            mean, std = one.new_tensor(c.latents_mean), one.new_tensor(c.latents_std)
            return mean[:, None, None], (c.scaling_factor / std)[:, None, None]
        shift = c.get("shift_factor") or 0.0
        return (one * shift).view(1, 1, 1), (one * c.scaling_factor).view(1, 1, 1)

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        """The pipeline's latents [B, C, h, w] of ``images`` in [-1, 1]."""
        x = to_model(images, self.config.pixel_range)
        name = self.config.class_name
        if name in POSTERIOR:
            posterior = self.ae.encode(x).latent_dist
            z = posterior.sample() if self.config.sample else posterior.mean
        elif name == "AutoencoderDC":
            z = self.ae.encode(x).latent
        else:
            z = self.ae.encode(x).latents
        if self.patch != (1, 1):
            ph, pw = self.patch
            z = rearrange(z, "b c (h ph) (w pw) -> b (c ph pw) h w", ph=ph, pw=pw)
        shift, scale = self._scaling()
        return (z - shift) * scale

    def _decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        shift, scale = self._scaling()
        z = z / scale + shift
        if self.patch != (1, 1):
            ph, pw = self.patch
            z = rearrange(z, "b (c ph pw) h w -> b c (h ph) (w pw)", ph=ph, pw=pw)
        decoder = self.consistency if self.consistency is not None else self.ae
        if decoder is self.consistency or self.config.class_name == "ConsistencyDecoderVAE":
            noise = torch.Generator(z.device).manual_seed(self.config.decode_seed)
            out = decoder.decode(z, generator=noise, num_inference_steps=self.config.decode_steps).sample
        else:
            out = decoder.decode(z).sample
        return from_model(out, self.config.pixel_range)

    def _check_latents(self, tokens: Tokens) -> torch.Tensor:
        spec = self.spec
        z = tokens.latents
        if z is None or z.dim() != 3 or tuple(z.shape[1:]) != (spec.max_tokens, spec.latent_dim):
            got = "ids only" if z is None else f"{z.dtype} {list(z.shape)}"
            raise ValueError(f"these tokens do not fit this tokenizer (it makes latents of shape [B, {spec.max_tokens}, "
                             f"{spec.latent_dim}], got {got}): decode tokens with the tokenizer that encoded them")
        return z

    def forward(self, images: torch.Tensor, prompt: Prompt | None = None) -> TokenizerOutput:
        # No losses: an imported autoencoder is used as it was trained.
        self.check_images(images, prompt)
        tokens = self._tokens(self._latents(images))
        return TokenizerOutput(self.decode(tokens), tokens, {}, None)

    def _tokens(self, z: torch.Tensor) -> Tokens:
        return Tokens(latents=rearrange(z, "b c h w -> b (h w) c"))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, prompt: Prompt | None = None) -> Tokens:
        self.check_images(images, prompt)
        return self._tokens(self._latents(images))

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        h, w = self.grid
        z = rearrange(self._check_latents(tokens), "b (h w) c -> b c h w", h=h, w=w)
        return self._decode_latents(z.float())
