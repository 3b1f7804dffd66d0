"""A diffusion decoder conditioned on discrete tokens (DALL-E 3's decoder; OpenAI's consistency
decoder): it replaces a tokenizer's own decoder, drawing the pixels the ids leave open instead of
their blurry average.

Each token's ids are embedded (one table per residual level, summed), laid on the token grid,
upsampled to the image size and concatenated to the noisy image as extra input channels of a
diffusers ``UNet2DModel``, trained with DDPM noise in pixel space; sampling is ``denoise``
(DPM-Solver++ or DDIM). The process is ``trilemma.nn.diffusion``'s, shared with the latent diffusion
generator. ``decode`` is deterministic (seed 0 unless told).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from trilemma import registry
from trilemma.generators.sampling import SamplingConfig, make_generator
from trilemma.nn.diffusion import NoiseScheduleConfig, check_noise_schedule, denoise, denoising_loss, make_scheduler
from trilemma.tokens import Tokens, TokenSpec


@dataclass
class TokenDiffusionConfig(NoiseScheduleConfig):
    # NoiseScheduleConfig's fields (prediction, train_timesteps, beta_schedule, scheduler, steps,
    # clip_x0) come first.
    clip_x0: float = 1.0  # x_0 bound: pixels live in [-1, 1]
    image_size: int = 32  # images it draws (the tokenizer's)
    embed_dim: int = 32  # token embedding channels laid on the grid
    channels: tuple[int, ...] = (64, 128, 128)  # UNet widths per level; self-attention on the last
    layers_per_block: int = 1
    heads_dim: int = 32  # channels per attention head


@registry.register("decoder", "token-diffusion")
class TokenDiffusionDecoder(nn.Module):
    Config = TokenDiffusionConfig

    def __init__(self, config: TokenDiffusionConfig, spec: TokenSpec):
        super().__init__()
        from diffusers import UNet2DModel  # deferred: a 2-3 s import

        if not spec.discrete or spec.grid is None:
            raise ValueError("the token-conditioned decoder needs a discrete tokenizer with a token grid (e.g. vq-f4-shapes)")
        check_noise_schedule(config)
        self.config, self.spec = config, spec
        self.embed = nn.Embedding(spec.vocab_size * spec.levels, config.embed_dim)
        levels = len(config.channels)
        self.unet = UNet2DModel(
            sample_size=config.image_size, in_channels=3 + config.embed_dim, out_channels=3,
            block_out_channels=tuple(config.channels), layers_per_block=config.layers_per_block,
            down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
            attention_head_dim=config.heads_dim, norm_num_groups=min(32, *(c // 4 for c in config.channels)),
        )
        self.noise_schedule = make_scheduler("ddpm", config)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def checkpoint_context(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict()}

    @classmethod
    def context_from_checkpoint(cls, context: dict[str, Any], directory: Path) -> dict[str, Any]:
        return {"spec": TokenSpec.from_dict(context["spec"])}

    def condition(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids [B, N] or [B, N, levels] -> conditioning channels [B, embed_dim, H, W] at image size."""
        ids = ids if ids.ndim == 3 else ids[..., None]
        offsets = torch.arange(ids.shape[-1], device=ids.device) * self.spec.vocab_size
        emb = self.embed(ids + offsets).sum(dim=2)  # [B, N, E]
        h, w = self.spec.grid
        grid = rearrange(emb, "b (h w) e -> b e h w", h=h, w=w)
        return F.interpolate(grid, size=(self.image_size, self.image_size), mode="nearest")

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """DDPM loss for images [B, 3, H, W] in [-1, 1] given their token ids."""
        cond = self.condition(ids)
        loss = denoising_loss(lambda xt, t: self.unet(torch.cat([xt, cond.to(xt.dtype)], 1), t).sample,
                              self.noise_schedule, images, self.config.prediction)
        return {"loss": loss}

    @torch.no_grad()
    def decode(self, tokens: Tokens, sampling: SamplingConfig | None = None) -> torch.Tensor:
        """Images [B, 3, H, W] for ``tokens`` (``sampling``: steps, scheduler, seed; default seed 0,
        so decoding the same tokens twice gives the same images)."""
        if tokens.ids is None:
            raise ValueError("the token-conditioned decoder needs token ids; these tokens carry only latents")
        sampling = sampling if sampling is not None else SamplingConfig(seed=0)
        self.eval()
        cond = self.condition(tokens.ids)
        gen = make_generator(sampling.seed, cond.device)
        noise = torch.randn((cond.shape[0], 3, self.image_size, self.image_size), generator=gen, device=cond.device)
        scheduler = make_scheduler(sampling.scheduler or self.config.scheduler, self.config)
        x = denoise(lambda x, t: self.unet(torch.cat([x, cond], 1), t).sample.float(), scheduler, noise,
                    sampling.steps or self.config.steps, gen, self.config.clip_x0)
        return x.clamp(-1, 1)


class DecodedBy(nn.Module):
    """A tokenizer whose ``decode`` is a decoder's: usable wherever a tokenizer is (evaluation,
    ``reconstruct``, a pipeline), so both decoders are scored by the same code on the same tokens."""

    def __init__(self, tokenizer: nn.Module, decoder: TokenDiffusionDecoder):
        super().__init__()
        if tokenizer.spec != decoder.spec:
            raise ValueError("this decoder was trained on another tokenizer's tokens (their TokenSpecs differ)")
        self.tokenizer, self.decoder = tokenizer, decoder

    @property
    def spec(self) -> TokenSpec:
        return self.tokenizer.spec

    @property
    def image_size(self) -> int:
        return self.tokenizer.image_size

    def encode(self, images: torch.Tensor, prompt: Any = None) -> Tokens:
        return self.tokenizer.encode(images, prompt)

    def decode(self, tokens: Tokens) -> torch.Tensor:
        return self.decoder.decode(tokens)

    def reconstruct(self, images: torch.Tensor, prompt: Any = None) -> torch.Tensor:
        return self.decode(self.encode(images, prompt)).clamp(-1, 1)


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("decoder", name, "token-diffusion", description, **fields)


_preset("token-diffusion-shapes", "CPU: UNet 64-128-128 on 32x32 pixels, 20 DPM-Solver++ steps")
_preset("token-diffusion-tiny", "test size: UNet 16-32, 4 steps", channels=(16, 32), embed_dim=8, heads_dim=8, steps=4)
_preset("token-diffusion-256", "GPU: UNet 128-256-256-512 x 2 on 256x256 pixels", image_size=256,
        channels=(128, 256, 256, 512), layers_per_block=2, embed_dim=64, heads_dim=64, prediction="v_prediction")
