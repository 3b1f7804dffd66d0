"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models") on a tokenizer's continuous latents, conditioned on our prompt encoder through
cross-attention (UNet) or joint attention (MMDiT); the decoder that DALL-E 2 and 3 put after their
token models. Neither denoiser attends to the prompt's padding, and MMDiT's pooled text vector is
the mean over the real tokens, so a caption reads the same however far it is padded.

The networks are diffusers': a ``UNet2DConditionModel`` or an MMDiT (``SD3Transformer2DModel``)
denoiser. The process, DDPM noise for training and DDIM or DPM-Solver++ for sampling through
``denoise``, is ``trilemma.nn.diffusion``'s, shared with the token-conditioned decoder. Latents are
normalised by a mean and scale measured on the training set (``fit``), stored in the checkpoint as
buffers (``generators/latents.py``, shared with MAR). Classifier-free guidance follows the other
generators: the model output of the conditional and empty-prompt rows, stacked in one batch, is
combined by ``Generator.guide``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from trilemma import registry
from trilemma.generators.base import Generator
from trilemma.generators.latents import LatentNormalisationMixin
from trilemma.generators.sampling import SamplingConfig
from trilemma.generators.text_encoder import TextEncoderMixin, TextEncoding
from trilemma.nn.diffusion import NoiseScheduleConfig, check_noise_schedule, denoise, denoising_loss, make_scheduler
from trilemma.nn.transformer import TransformerConfig, init_text_embeddings, init_weights
from trilemma.tokens import Tokens

DENOISERS = ("unet", "mmdit")


@dataclass
class DiffusionConfig(NoiseScheduleConfig):
    # NoiseScheduleConfig's fields (prediction, train_timesteps, beta_schedule, scheduler, steps,
    # clip_x0) come first.
    clip_x0: float = 3.0  # x_0 bound in normalised latents (unit std)
    # "unet": diffusers' UNet2DConditionModel, the text read by cross-attention at each level;
    # "mmdit": diffusers' SD3Transformer2DModel (Esser et al. 2024), latent patches and text tokens
    # in joint attention, with 2D position embeddings.
    denoiser: str = "unet"
    depth: int = 4  # mmdit: transformer blocks
    width: int = 128  # mmdit: hidden size (heads x head size)
    patch: int = 1  # mmdit: latent cells per patch side
    channels: tuple[int, ...] = (64, 128)  # unet: widths, one level each (the first at the latent grid)
    layers_per_block: int = 1  # unet: resnet (+ cross-attention) layers per UNet level
    heads: int = 4  # attention heads of the denoiser's attention blocks
    text_dim: int = 128  # prompt encoder width (what the denoiser attends to)
    text_depth: int = 2  # prompt encoder blocks (bidirectional)
    text_heads: int = 4
    cond_drop_prob: float = 0.1  # rows trained on the empty prompt, for classifier-free guidance
    # Min-SNR-gamma loss weights (Hang et al. 2023; ``nn.diffusion.min_snr_weighted``), so the nearly
    # clean levels, easy and many, stop dominating the gradient; 0 = the plain mean squared error.
    snr_gamma: float = 0.0


@registry.register("generator", "diffusion")
class Diffusion(LatentNormalisationMixin, TextEncoderMixin, Generator):
    Config = DiffusionConfig
    accepts = ("continuous",)

    def __init__(self, config: DiffusionConfig, spec, text):
        super().__init__(spec, text)
        if config.denoiser not in DENOISERS:
            raise ValueError(f"denoiser must be one of {DENOISERS}, got {config.denoiser!r}")
        check_noise_schedule(config)
        if spec.grid is None:
            raise ValueError("diffusion needs tokens laid on a grid (a convolutional tokenizer such as ae-f4-shapes)")
        self.config = config
        self._add_text_encoder(text.vocab_size, text.max_length,
                               TransformerConfig(config.text_dim, config.text_depth, config.text_heads))
        self.apply(init_weights)  # the prompt encoder; the denoiser keeps diffusers' initialisation
        init_text_embeddings(self.text_emb, self.text_pos)
        self.net = _denoiser_net(config, spec)
        self.noise_schedule = make_scheduler("ddpm", config)
        self._add_latent_normalisation(spec.latent_dim)  # measured on the training set by ``fit``

    # ------------------------------------------------------------------ latents

    def model_input(self, tokens: Tokens) -> torch.Tensor:
        """Tokens -> normalised latents [B, C, h, w], what ``forward`` trains on."""
        h, w = self.spec.grid
        return rearrange(self.normalise(tokens), "b (h w) c -> b c h w", h=h, w=w)

    def _to_tokens(self, x: torch.Tensor) -> Tokens:
        return self.to_tokens(rearrange(x, "b c h w -> b (h w) c"))

    def denoiser(self, x: torch.Tensor, t: torch.Tensor, memory: TextEncoding) -> torch.Tensor:
        """The denoiser's prediction for noisy latents ``x`` [B, C, h, w] at timesteps ``t`` (one per
        row, or one for all), conditioned on the text encodings ``memory`` (states [B, L, text_dim]
        and the mask of real tokens: padding is never attended)."""
        t = t.reshape(-1).expand(x.shape[0])
        if self.config.denoiser == "mmdit":
            # SD3's pooled text vector (it modulates every block with the timestep); the joint
            # attention's keys are [latent patches; text], the patches always attended.
            patches = (x.shape[-2] // self.config.patch) * (x.shape[-1] // self.config.patch)
            keys = torch.cat([memory.mask.new_ones(x.shape[0], patches), memory.mask], 1)
            return self.net(x, encoder_hidden_states=memory.states, pooled_projections=self.pooled(memory), timestep=t,
                            joint_attention_kwargs={"attention_mask": rearrange(keys, "b k -> b 1 1 k")}).sample
        return self.net(x, t, encoder_hidden_states=memory.states, encoder_attention_mask=memory.mask).sample

    # ------------------------------------------------------------------ training

    def forward(self, x0: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """DDPM loss for normalised latents [B, C, h, w] (``model_input``) and text ids [B, L]."""
        memory = self.encode_text(self.drop_captions(text_ids)[0])
        loss = denoising_loss(lambda xt, t: self.denoiser(xt, t, memory), self.noise_schedule, x0,
                              self.config.prediction, snr_gamma=self.config.snr_gamma)
        return {"loss": loss}

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, text_ids: torch.Tensor, sampling: SamplingConfig | None = None,
               known: torch.Tensor | None = None) -> Tokens:
        """Latent tokens for text ids [B, L] in ``sampling.steps`` denoising steps (default
        ``config.steps``) of ``sampling.scheduler`` (default ``config.scheduler``); also cfg_scale
        and seed (temperature, top_k and top_p do not apply to diffusion)."""
        sampling, rows, gen = self.start_sampling(text_ids, sampling, known)  # refuses budget and known
        b, (h, w) = text_ids.shape[0], self.spec.grid
        memory = self.encode_text(rows)
        scheduler = make_scheduler(sampling.scheduler or self.config.scheduler, self.config)

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = self.denoiser(self.stack_rows(x, rows), t, memory).float()
            return self.guide(out, b, sampling.cfg_scale)

        noise = torch.randn((b, self.spec.latent_dim, h, w), generator=gen, device=text_ids.device)
        x = denoise(model, scheduler, noise, sampling.steps or self.config.steps, gen, self.config.clip_x0)
        return self._to_tokens(x)


def _denoiser_net(config: DiffusionConfig, spec) -> torch.nn.Module:
    """diffusers' denoiser for ``config.denoiser``: a UNet that reads the text by cross-attention,
    or an MMDiT whose blocks attend jointly over latent patches and text tokens."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel  # deferred: a 2-3 s import

    (h, w), c = spec.grid, spec.latent_dim
    if config.denoiser == "mmdit":
        if config.width % config.heads:
            raise ValueError(f"width {config.width} must be divisible by heads {config.heads}")
        if h != w or h % config.patch:
            raise ValueError(f"the mmdit denoiser needs a square latent grid divisible by patch {config.patch}, got {h}x{w}")
        net = SD3Transformer2DModel(
            sample_size=h, patch_size=config.patch, in_channels=c, out_channels=c, num_layers=config.depth,
            attention_head_dim=config.width // config.heads, num_attention_heads=config.heads,
            joint_attention_dim=config.text_dim, caption_projection_dim=config.width,
            pooled_projection_dim=config.text_dim, pos_embed_max_size=h // config.patch,
        )
        net.set_attn_processor(MaskedJointAttention())
        return net
    levels = len(config.channels)
    return UNet2DConditionModel(
        sample_size=spec.grid, in_channels=c, out_channels=c,
        block_out_channels=tuple(config.channels), layers_per_block=config.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * levels, up_block_types=("CrossAttnUpBlock2D",) * levels,
        cross_attention_dim=config.text_dim, attention_head_dim=config.heads,
        norm_num_groups=min(32, *(ch // 4 for ch in config.channels)),
    )


class MaskedJointAttention:
    """diffusers' ``JointAttnProcessor2_0`` (SD3's attention over [latent patches; text], each with
    its own projections) that honours ``attention_mask`` [B, 1, 1, keys] (True: attended): theirs
    ignores it, so the prompt's padding would be attended. Holds no weights: a checkpoint is unchanged."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        def heads(x: torch.Tensor) -> torch.Tensor:
            return rearrange(x, "b n (h d) -> b h n d", h=attn.heads)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:
            cq, ck = heads(attn.add_q_proj(encoder_hidden_states)), heads(attn.add_k_proj(encoder_hidden_states))
            cv = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        out = rearrange(F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask), "b h n d -> b n (h d)")
        n = hidden_states.shape[1]
        out, context = attn.to_out[1](attn.to_out[0](out[:, :n])), out[:, n:]  # projection, dropout
        if encoder_hidden_states is None:
            return out
        return out, (context if attn.context_pre_only else attn.to_add_out(context))


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("generator", name, "diffusion", description, **fields)


_preset("diffusion-shapes", "CPU: UNet 64-128 with cross-attention on 8x8 latents, 20 DPM-Solver++ steps")
_preset("diffusion-tiny", "test size: UNet 16-32, 1-block prompt encoder", channels=(16, 32), heads=2, text_dim=32,
        text_depth=1, text_heads=2, steps=4)
_preset("diffusion-base", "GPU: UNet 256-512-768 x 2 layers on 32x32x4 latents (ae-f8-256), v-prediction",
        channels=(256, 512, 768), layers_per_block=2, heads=8, text_dim=512, text_depth=6, text_heads=8,
        prediction="v_prediction")
