"""Multi-scale residual VQ: the tokenizer of VAR (Tian et al. 2024, "Visual Autoregressive Modeling:
Scalable Image Generation via Next-Scale Prediction", arXiv:2404.02905).

The encoder's latent map f [B, C, H, W] becomes one s x s map of ids per scale s (coarse to fine,
the last one H), all from one shared codebook. Each scale quantizes what the coarser ones left:

    f_rest = f;  f_hat = 0
    for each scale k:  r = area-downsample(f_rest) to s_k x s_k;  ids = nearest codes of r
                       h = phi_k(bicubic-upsample(codes[ids]) to H x W);  f_hat += h;  f_rest -= h

and the decoder sees f_hat (straight-through to the encoder). ``phi_k`` is a 3x3 convolution blended
with its input, ``(1 - phi_ratio) * x + phi_ratio * conv(x)``: it sharpens what a coarse code paints
once upsampled. As in VAR, ``num_phi`` of them are shared by neighbouring scales (VAR uses 4).
Any prefix of scales decodes: the sum of its contributions is a coarser f_hat.

The codebook is vector-quantize-pytorch's EMA codebook (``VectorQuantize``, Euclidean, not cosine:
residuals shrink scale by scale, so codes need magnitudes). We look up nearest codes ourselves at
each scale and make one EMA update per step from every scale's residuals together
(``update_indices``), so decay and dead-code replacement see the step's whole batch of vectors once
rather than a coarse scale's few (the 1 x 1 scale has one vector per image). Dead codes are
re-seeded from those residuals; that is also the initialisation: the codebook starts random and
the first training step re-seeds almost every code from real residuals, at every scale (k-means on
the first call would only see the coarsest scale). Against VAR's gradient-trained ``nn.Embedding``:
EMA with re-seeding keeps the codebook in use on small data, where a codebook nothing picks never
moves again. The phi's train by the loss ``phi``, ``mse(f_hat, f.detach())``; the encoder by the
commitment loss ``commit``, ``beta * mse(f_hat.detach(), f)``, and the decoder's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate, pairwise

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import Codebook

from trilemma import registry
from trilemma.tokenizers.base import Tokenizer, TokenizerOutput
from trilemma.tokenizers.quantizers import QuantizerOutput, dead_code_threshold
from trilemma.tokenizers.vqvae import _F16, _SHAPES, Decoder, Encoder
from trilemma.tokens import Prompt, Tokens, TokenSpec


@dataclass
class MultiScaleVQVAEConfig:
    image_size: int = 32  # square input resolution
    channels: int = 64  # width at full resolution
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width multiplier per resolution; factor = 2**(len-1)
    num_res_blocks: int = 1  # ResNet blocks per resolution
    attention: bool = False  # self-attention at the lowest resolution (GPU presets)
    dropout: float = 0.0
    scales: tuple[int, ...] = (1, 2, 3, 4, 6, 8)  # token map sides, coarse to fine; the last is the latent side
    codebook_size: int = 256  # one vocabulary shared by every scale
    codebook_dim: int = 16  # latent channels = code size (no projection, as VAR's 32-d codes)
    commitment_weight: float = 0.25  # beta of VQ-VAE; the loss named "commit"
    num_phi: int = 4  # 3x3 conv refinements shared by neighbouring scales (VAR: 4); 0 = none
    phi_ratio: float = 0.5  # phi(x) = (1 - ratio) * x + ratio * conv(x) (VAR's quant_resi)
    decay: float = 0.99  # EMA decay of the codebook, one update per step
    threshold_ema_dead_code: float = 2.0  # re-seed codes under this EMA count (at most half a uniform code's count)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_side(self) -> int:
        return self.image_size // self.factor


class Phi(nn.Module):
    """A 3x3 convolution blended with its input: a residual refinement of an upsampled code map."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        self.ratio = ratio
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return (1 - self.ratio) * x + self.ratio * self.conv(x)


class MultiScaleQuantizer(nn.Module):
    """VAR's residual quantizer over ``scales``; ids are the scales' maps flattened and concatenated."""

    def __init__(self, config: MultiScaleVQVAEConfig):
        super().__init__()
        self.config = config
        self.scales = tuple(config.scales)
        self.codebook = VectorQuantize(
            dim=config.codebook_dim,
            codebook_size=config.codebook_size,
            decay=config.decay,
            kmeans_init=False,  # seeded from the first step's residuals by dead-code replacement
            threshold_ema_dead_code=config.threshold_ema_dead_code,
            use_cosine_sim=False,
            commitment_weight=0.0,  # our losses are computed on f_hat, not per scale
        )
        # every phi is used at every step (unused parameters would stall distributed training)
        num_phi = min(config.num_phi, len(self.scales)) if config.phi_ratio > 0 else 0
        self.phis = nn.ModuleList(Phi(config.codebook_dim, config.phi_ratio) for _ in range(num_phi))

    @property
    def prefix_lengths(self) -> tuple[int, ...]:
        """Token counts of the decodable prefixes: the first 1, 2, ... scales."""
        return tuple(accumulate(s * s for s in self.scales))

    def _phi(self, k: int, x: Tensor) -> Tensor:
        if not self.phis:
            return x
        # scale k of n sits at k / (n - 1) along the schedule; the phi nearest that point refines it
        position = k / max(len(self.scales) - 1, 1)
        return self.phis[round(position * (len(self.phis) - 1))](x)

    def contribution(self, ids: Tensor, k: int) -> Tensor:
        """Scale ``k``'s ids [B, s*s] -> its share of f_hat [B, C, H, W]."""
        s, side = self.scales[k], self.scales[-1]
        codes = rearrange(self.codebook.codebook[ids], "b (h w) c -> b c h w", h=s, w=s)
        if s != side:
            codes = F.interpolate(codes, size=(side, side), mode="bicubic")
        return self._phi(k, codes)

    def contributions(self, ids: Tensor) -> list[Tensor]:
        """ids [B, L] of the first scales (L a prefix length) -> each scale's [B, C, H, W] share."""
        with torch.autocast(device_type=ids.device.type, enabled=False):
            starts = (0,) + self.prefix_lengths
            return [self.contribution(ids[:, starts[k]:starts[k + 1]], k)
                    for k in range(self.prefix_lengths.index(ids.shape[1]) + 1)]

    def _nearest(self, r: Tensor) -> Tensor:
        """Ids of the nearest codes (Euclidean) of r [B, N, C]."""
        return torch.cdist(r, self.codebook.codebook.unsqueeze(0)).argmin(-1)

    def forward(self, f: Tensor) -> QuantizerOutput:
        """f [B, C, H, W] -> quantized (f_hat, straight-through), ids [B, sum s^2], losses, usage."""
        with torch.autocast(device_type=f.device.type, enabled=False):  # fp32: bf16 moves nearest codes
            return self._quantize(f.float())

    def _quantize(self, f: Tensor) -> QuantizerOutput:
        side = f.shape[-1]
        f_rest, f_hat = f.detach(), torch.zeros_like(f)
        residuals, ids = [], []
        for k, s in enumerate(self.scales):
            r = f_rest if s == side else F.interpolate(f_rest, size=(s, s), mode="area")
            residuals.append(rearrange(r, "b c h w -> b (h w) c"))
            ids.append(self._nearest(residuals[-1]))
            h = self.contribution(ids[-1], k)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
        ids = torch.cat(ids, dim=1)
        if self.training:
            self._update_codebook(torch.cat(residuals, dim=1), ids)
        losses = {"commit": self.config.commitment_weight * F.mse_loss(f_hat.detach(), f)}
        if self.phis:
            losses["phi"] = F.mse_loss(f_hat, f.detach())
        usage = torch.bincount(ids.flatten(), minlength=self.config.codebook_size).float()
        return QuantizerOutput(f + (f_hat - f).detach(), ids, losses, usage)

    @torch.no_grad()
    def _update_codebook(self, residuals: Tensor, ids: Tensor) -> None:
        """One EMA step (and dead-code re-seeding) from every scale's residuals [B, N, C] and ids."""
        cfg = self.config
        threshold = dead_code_threshold(cfg.threshold_ema_dead_code, ids.numel(), cfg.codebook_size)
        for module in self.codebook.modules():
            if isinstance(module, Codebook):
                module.threshold_ema_dead_code = threshold  # read on every update (see quantizers.py)
        self.codebook.update_indices(residuals, ids)


@registry.register("tokenizer", "msvq")
class MultiScaleVQVAE(Tokenizer):
    """The VQ-VAE encoder and decoder (vqvae.py) around VAR's multi-scale residual quantizer."""

    Config = MultiScaleVQVAEConfig

    def __init__(self, config: MultiScaleVQVAEConfig):
        super().__init__()
        if config.image_size % config.factor:
            raise ValueError(f"`image_size` {config.image_size} is not divisible by the factor {config.factor}")
        scales, side = tuple(config.scales), config.latent_side
        if (not scales or scales[-1] != side or any(s < 1 for s in scales)
                or any(a >= b for a, b in pairwise(scales))):
            raise ValueError(
                f"`scales` must be strictly increasing token map sides ending at the latent side {side} "
                f"(`image_size` {config.image_size} / factor {config.factor}), got {scales}"
            )
        self.config = config
        self.encoder = Encoder(config, config.codebook_dim)
        self.quantizer = MultiScaleQuantizer(config)
        self.decoder = Decoder(config, config.codebook_dim)

    @property
    def spec(self) -> TokenSpec:
        scales = tuple(self.config.scales)
        return TokenSpec("discrete", sum(s * s for s in scales), vocab_size=self.config.codebook_size,
                         grid=None, scales=scales)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight: where VQGAN balances reconstruction and adversarial gradients."""
        return self.decoder.net[-1].weight

    def forward(self, images: torch.Tensor, prompt: Prompt | None = None) -> TokenizerOutput:
        self.check_images(images, prompt)
        q_out = self.quantizer(self.encoder(images))
        recon = self.decoder(q_out.quantized)
        return TokenizerOutput(recon, Tokens(ids=q_out.ids), dict(q_out.losses), q_out.usage)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, prompt: Prompt | None = None) -> Tokens:
        self.check_images(images, prompt)
        return Tokens(ids=self.quantizer(self.encoder(images)).ids)

    def scale_contributions(self, ids: Tensor) -> list[Tensor]:
        """Each scale's share of the latent f_hat [B, C, H, W], for ids [B, L] of a prefix of whole
        scales; their running sum is the coarse-to-fine picture, their total what the decoder sees."""
        self._check_ids(ids)
        return self.quantizer.contributions(ids.long())

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        """Ids of the first k scales (any k) -> images; fewer scales decode to a coarser image."""
        if tokens.ids is None:
            raise ValueError(
                "these tokens do not fit this tokenizer (it makes discrete tokens): "
                "decode tokens with the tokenizer that encoded them"
            )
        f_hat = torch.stack(self.scale_contributions(tokens.ids)).sum(0)
        return self.decoder(f_hat)

    def at_scales(self, count: int) -> "ScalePrefix":
        """This tokenizer read at its first ``count`` scales (``ScalePrefix``)."""
        return ScalePrefix(self, count)

    def _check_ids(self, ids: Tensor) -> None:
        valid = self.quantizer.prefix_lengths
        if ids.ndim != 2 or ids.dtype.is_floating_point:
            raise ValueError(f"`ids` must be integers of shape [B, L], got {ids.dtype} {tuple(ids.shape)}")
        if ids.shape[1] not in valid:
            raise ValueError(
                f"`ids` must hold whole scales {tuple(self.config.scales)}, coarse to fine: "
                f"a length in {valid}, got {ids.shape[1]}"
            )
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.config.codebook_size):
            raise ValueError(f"`ids` must be in [0, {self.config.codebook_size})")


class ScalePrefix(nn.Module):
    """A multi-scale tokenizer read at its first ``count`` scales, as a tokenizer of its own: encode
    keeps those scales' ids, decode paints the coarser image they hold. What the trade-off study
    evaluates to draw PSNR against the tokens a prefix of scales costs."""

    def __init__(self, tokenizer: MultiScaleVQVAE, count: int):
        super().__init__()
        scales = tuple(tokenizer.config.scales)
        if not 1 <= count <= len(scales):
            raise ValueError(f"`count` must be 1 to {len(scales)} (the tokenizer's scales), got {count}")
        self.tokenizer, self.scales = tokenizer, scales[:count]
        self.registry_name = tokenizer.registry_name

    @property
    def spec(self) -> TokenSpec:
        return TokenSpec("discrete", sum(s * s for s in self.scales), vocab_size=self.tokenizer.config.codebook_size,
                         scales=self.scales)

    @property
    def image_size(self) -> int:
        return self.tokenizer.image_size

    @torch.no_grad()
    def encode(self, images: torch.Tensor, prompt: Prompt | None = None) -> Tokens:
        return Tokens(ids=self.tokenizer.encode(images, prompt).ids[:, : self.spec.max_tokens])

    def decode(self, tokens: Tokens) -> torch.Tensor:
        return self.tokenizer.decode(tokens)


def _preset(name: str, description: str, **fields) -> None:
    registry.register_preset("tokenizer", name, "msvq", description, **fields)


def _widths(fields: dict) -> dict:
    """A VQ preset's encoder/decoder fields (its bottleneck `dim` is our `codebook_dim`)."""
    return {k: v for k, v in fields.items() if k != "dim"}


# CPU: the widths, vocabulary (256 codes) and training recipe of vq-f4-shapes: the quantizer is the one difference.
_preset("msvq-f4-shapes", "multi-scale VQ (VAR), scales 1-2-3-4-6-8 (130 tokens), 256 codes (16-d)",
        recipe={"steps": 2000, "lr": 1e-3}, **_widths(_SHAPES), scales=(1, 2, 3, 4, 6, 8), codebook_size=256,
        codebook_dim=16)
# GPU: VAR's schedule and codebook (4096 x 32-d) on the widths of vq-f16-256.
_preset("msvq-f16-256", "multi-scale VQ (VAR) f16, scales 1..16 (680 tokens), 4096 codes (32-d)",
        **_widths(_F16), scales=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), codebook_size=4096, codebook_dim=32)
# Tests: a narrow body at 32x32, f4.
_preset("msvq-tiny", "multi-scale VQ at test size: scales 1-2-4-8, 64 codes (8-d)", image_size=32, channels=8,
        channel_mult=(1, 2, 2), scales=(1, 2, 4, 8), codebook_size=64, codebook_dim=8)
