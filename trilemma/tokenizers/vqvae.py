"""Convolutional autoencoder tokenizers: VQ-VAE (van den Oord et al. 2017) / VQGAN (Esser et al. 2021).

One encoder/decoder pair, any quantizer from ``quantizers.py`` at the bottleneck: VQ, residual VQ
(Zeghidour et al. 2021), FSQ (Mentzer et al. 2023), LFQ (Yu et al. 2023, MAGVIT-v2), or none
(a continuous autoencoder, optionally KL-regularised as in latent diffusion). The downsampling factor
is ``2 ** (len(channel_mult) - 1)``; a 32x32 image at factor 4 becomes an 8x8 grid of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import nn

from trilemma import registry
from trilemma.nn.conv import Downsample, ResnetBlock, SpatialAttention, Upsample, norm
from trilemma.tokenizers.base import Tokenizer, TokenizerOutput
from trilemma.tokens import Prompt, Tokens, TokenSpec


@dataclass
class VQVAEConfig:
    image_size: int = 32  # square input resolution
    channels: int = 64  # width at full resolution
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width multiplier per resolution; factor = 2**(len-1)
    num_res_blocks: int = 1  # ResNet blocks per resolution
    attention: bool = False  # self-attention at the lowest resolution (GPU presets)
    dim: int = 64  # bottleneck channels handed to the quantizer
    dropout: float = 0.0
    quantizer: dict[str, Any] = field(default_factory=lambda: {"name": "vq"})  # name + its Config fields

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


def _stages(layers: list[nn.Module], c: VQVAEConfig, widths: list[int], cin: int, resample: type) -> int:
    """Append ``num_res_blocks`` ResNet blocks per width, resampling between widths; the last width."""
    for i, w in enumerate(widths):
        for _ in range(c.num_res_blocks):
            layers.append(ResnetBlock(cin, w, c.dropout))
            cin = w
        if i < len(widths) - 1:
            layers.append(resample(cin))
    return cin


def _middle(c: VQVAEConfig, dim: int) -> list[nn.Module]:
    """The lowest resolution's ResNet block, optional self-attention, ResNet block."""
    return [ResnetBlock(dim, dim, c.dropout), *([SpatialAttention(dim)] if c.attention else []), ResnetBlock(dim, dim, c.dropout)]


class Encoder(nn.Module):
    def __init__(self, c: VQVAEConfig, out_channels: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, c.channels, 3, padding=1)]
        cin = _stages(layers, c, [c.channels * m for m in c.channel_mult], c.channels, Downsample)
        layers += _middle(c, cin) + [norm(cin), nn.SiLU(), nn.Conv2d(cin, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, c: VQVAEConfig, in_channels: int):
        super().__init__()
        widths = [c.channels * m for m in reversed(c.channel_mult)]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1), *_middle(c, widths[0])]
        cin = _stages(layers, c, widths, widths[0], Upsample)
        layers += [norm(cin), nn.SiLU(), nn.Conv2d(cin, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@registry.register("tokenizer", "vqvae")
class VQVAE(Tokenizer):
    Config = VQVAEConfig
    any_size = True

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        if config.image_size % config.factor:
            raise ValueError(f"image_size {config.image_size} is not divisible by the factor {config.factor}")
        self.config = config
        qcfg = dict(config.quantizer)
        qname = qcfg.pop("name", "vq")
        self.quantizer = registry.build("quantizer", qname, dim=config.dim, **qcfg)
        self.encoder = Encoder(config, self.quantizer.in_channels)
        self.decoder = Decoder(config, self.quantizer.latent_dim)
        self.grid = (config.image_size // config.factor,) * 2

    @property
    def spec(self) -> TokenSpec:
        q = self.quantizer
        h, w = self.grid
        if q.discrete:
            return TokenSpec("discrete", h * w, vocab_size=q.vocab_size, grid=self.grid, levels=q.levels)
        return TokenSpec("continuous", h * w, latent_dim=q.latent_dim, grid=self.grid)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight: where VQGAN balances reconstruction and adversarial gradients."""
        return self.decoder.net[-1].weight

    def _tokens(self, q_out: Any) -> Tokens:
        if q_out.ids is not None:
            ids = rearrange(q_out.ids, "b h w ... -> b (h w) ...")
            return Tokens(ids=ids)
        return Tokens(latents=rearrange(q_out.quantized, "b d h w -> b (h w) d"))

    def forward(self, images: torch.Tensor, prompt: Prompt | None = None) -> TokenizerOutput:
        self.check_images(images, prompt)
        q_out = self.quantizer(self.encoder(images))
        recon = self.decoder(q_out.quantized)
        return TokenizerOutput(recon, self._tokens(q_out), dict(q_out.losses), q_out.usage)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, prompt: Prompt | None = None) -> Tokens:
        self.check_images(images, prompt)
        return self._tokens(self.quantizer(self.encoder(images)))

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        h, w = self.grid
        if tokens.ids is not None and self.quantizer.discrete:
            ids = rearrange(tokens.ids, "b (h w) ... -> b h w ...", h=h, w=w)
            z = self.quantizer.ids_to_latents(ids)
        elif tokens.latents is not None and not self.quantizer.discrete:
            z = rearrange(tokens.latents, "b (h w) d -> b d h w", h=h, w=w)
        else:
            raise ValueError(
                f"these tokens do not fit this tokenizer (it makes {self.spec.kind} tokens): "
                "decode tokens with the tokenizer that encoded them"
            )
        return self.decoder(z.float())


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("tokenizer", name, "vqvae", description, **fields)


# CPU presets: 32x32 shapes, train in minutes on 2 cores.
_SHAPES = dict(image_size=32, channels=48, channel_mult=(1, 2, 2), num_res_blocks=1, dim=64)
# Its recipe is how `demo --full` trains the generators' VQ (43.9 dB on held-out shapes: docs/experiments.md).
_preset("vq-f4-shapes", "VQ, 8x8 tokens, 256 codes (8-d cosine codebook)", recipe={"steps": 2000, "lr": 1e-3}, **_SHAPES,
        quantizer={"name": "vq", "codebook_size": 256, "codebook_dim": 8})
_preset("vq-f8-shapes", "VQ, 4x4 tokens, 1024 codes: the compact corner", **{**_SHAPES, "channel_mult": (1, 2, 2, 2)},
        quantizer={"name": "vq", "codebook_size": 1024, "codebook_dim": 8})
_preset("rvq-f4-shapes", "residual VQ, 8x8 tokens x depth 4, 256 codes per level", **_SHAPES,
        quantizer={"name": "rvq", "num_quantizers": 4, "codebook_size": 256, "codebook_dim": 8})
_preset("fsq-f4-shapes", "FSQ levels 8-5-5-5 (1000 codes), 8x8 tokens", **_SHAPES,
        quantizer={"name": "fsq", "levels": [8, 5, 5, 5]})
_preset("lfq-f4-shapes", "LFQ 2^9 codes, 8x8 tokens", **_SHAPES,
        quantizer={"name": "lfq", "codebook_size": 512})
_preset("ae-f4-shapes", "continuous autoencoder, 8x8 x 4-d latents, light KL", **{**_SHAPES, "dim": 4},
        quantizer={"name": "none", "kl_weight": 1e-6})
# The base of promptable-photos: 64x64 photo crops to shapes' 8x8 latent grid (f8), where a box prompt bought
# more than over an f4 base at 64 (docs/experiments.md, "Promptable on photographs").
_preset("ae-f8-photos", "continuous autoencoder for 64x64 crops of your photos: 8x8 x 4-d latents (promptable-photos' base)",
        **{**_SHAPES, "image_size": 64, "channel_mult": (1, 2, 2, 2), "dim": 4}, quantizer={"name": "none", "kl_weight": 1e-6},
        recipe={"steps": 1200, "lr": 1e-3, "random_crop": 0.35})
_preset("fsq-f8-photos", "FSQ levels 8-5-5-5 (1000 codes) for 64x64 crops of your photos: 8x8 tokens (ae-f8-photos, discrete)",
        **{**_SHAPES, "image_size": 64, "channel_mult": (1, 2, 2, 2)}, quantizer={"name": "fsq", "levels": [8, 5, 5, 5]},
        recipe={"steps": 1200, "lr": 1e-3, "random_crop": 0.35})

# GPU presets: 256x256, taming/LlamaGen-like widths (exercised at tiny size in tests).
_F16 = dict(image_size=256, channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attention=True, dim=256)
_F8 = dict(image_size=256, channels=128, channel_mult=(1, 2, 2, 4), num_res_blocks=2, attention=True, dim=256)
_preset("vq-f16-256", "VQGAN f16, 16x16 tokens, 16384 codes (8-d, LlamaGen-style)", **_F16,
        quantizer={"name": "vq", "codebook_size": 16384, "codebook_dim": 8})
_preset("vq-f8-256", "VQGAN f8, 32x32 tokens, 16384 codes", **_F8,
        quantizer={"name": "vq", "codebook_size": 16384, "codebook_dim": 8})
_preset("fsq-f16-256", "FSQ f16, levels 8-8-8-5-5-5 (64000 codes)", **_F16,
        quantizer={"name": "fsq", "levels": [8, 8, 8, 5, 5, 5]})
_preset("lfq-f16-256", "LFQ f16, 2^18 codes (MAGVIT-v2)", **_F16,
        quantizer={"name": "lfq", "codebook_size": 2**18})
_preset("rvq-f16-256", "residual VQ f16, depth 4, 4096 codes per level", **_F16,
        quantizer={"name": "rvq", "num_quantizers": 4, "codebook_size": 4096, "codebook_dim": 8})
_preset("ae-f8-256", "continuous KL autoencoder f8, 4-d latents (latent-diffusion style)", **{**_F8, "dim": 4},
        quantizer={"name": "none", "kl_weight": 1e-6})
