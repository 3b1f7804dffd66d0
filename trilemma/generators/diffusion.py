"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models") on a tokenizer's continuous latents, conditioned on our prompt encoder through
cross-attention (UNet) or joint attention (MMDiT); the decoder that DALL-E 2 and 3 put after their
token models.

The networks and the noise schedules are diffusers': a ``UNet2DConditionModel`` or an MMDiT
(``SD3Transformer2DModel``) denoiser, DDPM noise for training (predicting x_0, epsilon or v, Salimans &
Ho 2022), and DDIM (Song et al. 2021) or DPM-Solver++ (Lu et al. 2022) for sampling. The denoising
loop is ``denoise`` below. Latents are normalised by a mean and scale measured on the training set
(``fit``), stored in the checkpoint as buffers. Classifier-free guidance follows the other
generators: the model output of the conditional and empty-prompt rows, stacked in one batch, is
combined by ``Generator.guide``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from einops import rearrange

from trilemma import registry
from trilemma.generators.base import Generator
from trilemma.generators.sampling import SCHEDULERS, SamplingConfig
from trilemma.generators.text_encoder import TextEncoderMixin
from trilemma.nn.transformer import TransformerConfig, init_text_embeddings, init_weights
from trilemma.tokens import Tokens

PREDICTIONS = ("epsilon", "v_prediction", "sample")
DENOISERS = ("unet", "mmdit")


@dataclass
class DiffusionConfig:
    # "unet": diffusers' UNet2DConditionModel, the text read by cross-attention at each level;
    # "mmdit": diffusers' SD3Transformer2DModel (Esser et al. 2024), latent patches and text tokens
    # in joint attention, with 2D position embeddings. Measured in the demo's setting (400 steps of
    # 32 on ae-f4 latents, guidance 3): shape / position 5.6 / 20.6% for mmdit width 128 x 4 blocks,
    # 5.6 / 18.0% for the UNet 32-64; both need thousands of steps here. (Two coordinate channels
    # beside the UNet's input, CoordConv, read 4.8 / 15.5%: not kept.)
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
    # What the denoiser predicts: "epsilon", "v_prediction" or "sample" (x_0). Measured in the demo's
    # setting (UNet 32-64, 450 fp32 steps of 32 on the demo's ae-f4 latents, 300 held-out prompts,
    # guidance 3, shape / colour / size / position): epsilon 8 / 8 / 16 / 27%, v 35 / 68 / 70 / 92%,
    # x_0 33 / 76 / 76 / 95%. Epsilon's loss is near zero at high noise, where the layout is decided;
    # an x_0 loss weighs those levels most, and 900 steps of it read 54 / 99 / 93 / 99%.
    prediction: str = "sample"
    train_timesteps: int = 1000  # DDPM noise levels
    beta_schedule: str = "squaredcos_cap_v2"  # the cosine schedule (Nichol & Dhariwal 2021)
    scheduler: str = "dpm++"  # default sampler: "dpm++" (DPM-Solver++ 2M) or "ddim"
    steps: int = 20  # default denoising steps (sampling option ``steps`` overrides)
    clip_x0: float = 3.0  # bound on the x_0 a prediction implies, in normalised latents (0 = off)
    cond_drop_prob: float = 0.1  # rows trained on the empty prompt, for classifier-free guidance
    # Min-SNR-gamma loss weights (Hang et al. 2023): each noise level's loss weighted by
    # min(SNR, gamma) / SNR (epsilon), / (SNR + 1) (v) or alone (x_0), so the nearly clean levels, easy and
    # many, stop dominating the gradient; 0 = the plain mean squared error.
    snr_gamma: float = 0.0


def make_scheduler(name: str, config: Any) -> Any:
    """A diffusers scheduler over ``config``'s noise schedule (``train_timesteps``, ``beta_schedule``,
    ``prediction``): "ddpm" (training), "ddim" or "dpm++" (sampling)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=config.train_timesteps, beta_schedule=config.beta_schedule,
                  prediction_type=config.prediction)
    if name == "ddpm":
        return DDPMScheduler(**common)
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
    if name == "dpm++":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


def training_target(schedule: Any, prediction: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What a denoiser of ``prediction`` type learns to output for x_t = ``schedule.add_noise(x0,
    noise, t)``: the noise, the velocity (Salimans & Ho 2022) or x_0 itself."""
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return schedule.get_velocity(x0, noise, t)
    return x0


def denoise(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler: Any, noise: torch.Tensor,
            steps: int, generator: torch.Generator | None = None, clip_x0: float = 0.0) -> torch.Tensor:
    """The sampling loop: from pure ``noise`` (scaled by the scheduler's initial sigma) through
    ``steps`` scheduler steps, each asking ``model(x_t, t)`` for its prediction (epsilon or v, as
    the scheduler was configured). ``clip_x0`` > 0 bounds the x_0 each prediction implies (see
    ``clip_prediction``). Returns x_0."""
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        prediction = model(scheduler.scale_model_input(x, t), t)
        if clip_x0 > 0:
            prediction = clip_prediction(prediction, x, t, scheduler, clip_x0)
        x = scheduler.step(prediction, t, x, generator=generator).prev_sample
    return x


def clip_prediction(prediction: torch.Tensor, x: torch.Tensor, t: torch.Tensor, scheduler: Any, limit: float) -> torch.Tensor:
    """The prediction (epsilon or v) whose implied x_0 is clamped to [-limit, limit].

    Near the end of the cosine schedule alpha_bar is ~0, so x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
    multiplies any error in eps by up to ~1/sqrt(a): measured here, DDIM and DPM-Solver++ from pure
    noise drew coloured fog, while the same model denoising from t = 900 drew clean shapes. Bounding
    x_0 (DDIM's ``clip_sample``, made scheduler-independent) fixes the first steps."""
    if scheduler.config.prediction_type == "sample":  # the prediction is x_0 itself
        return prediction.clamp(-limit, limit)
    a = scheduler.alphas_cumprod.to(x.device)[int(t)].float()
    s_a, s_1a = a.sqrt(), (1 - a).sqrt()
    if scheduler.config.prediction_type == "epsilon":
        x0 = ((x - s_1a * prediction) / s_a).clamp(-limit, limit)
        return (x - s_a * x0) / s_1a
    x0 = (s_a * x - s_1a * prediction).clamp(-limit, limit)
    return (s_a * x - x0) / s_1a


@registry.register("generator", "diffusion")
class Diffusion(TextEncoderMixin, Generator):
    Config = DiffusionConfig
    accepts = ("continuous",)

    def __init__(self, config: DiffusionConfig, spec, text):
        super().__init__(spec, text)
        if config.denoiser not in DENOISERS:
            raise ValueError(f"denoiser must be one of {DENOISERS}, got {config.denoiser!r}")
        if config.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {config.prediction!r}")
        make_scheduler(config.scheduler, config)  # an unknown sampler fails here, not after training
        if spec.grid is None:
            raise ValueError("diffusion needs tokens laid on a grid (a convolutional tokenizer such as ae-f4-shapes)")
        self.config = config
        self._add_text_encoder(text.vocab_size, text.max_length,
                               TransformerConfig(config.text_dim, config.text_depth, config.text_heads))
        self.apply(init_weights)  # the prompt encoder; the denoiser keeps diffusers' initialisation
        init_text_embeddings(self.text_emb, self.text_pos)
        self.net = _denoiser_net(config, spec)
        self.noise_schedule = make_scheduler("ddpm", config)
        # Latent normalisation, measured on the training set by ``fit``; saved with the weights.
        self.register_buffer("latent_mean", torch.zeros(spec.latent_dim))
        self.register_buffer("latent_scale", torch.ones(()))

    # ------------------------------------------------------------------ latents

    @torch.no_grad()
    def fit(self, tokens: Tokens) -> None:
        """Measure the training latents' per-channel mean and overall 1 / std."""
        latents = self._latents(tokens).float()
        mean = latents.mean(dim=(0, 2, 3))
        std = (latents - mean[None, :, None, None]).std()
        self.latent_mean.copy_(mean)
        self.latent_scale.copy_(1.0 / std.clamp_min(1e-6))

    def _latents(self, tokens: Tokens) -> torch.Tensor:
        if tokens.latents is None:
            raise ValueError("diffusion needs continuous latents; these tokens carry only ids")
        h, w = self.spec.grid
        return rearrange(tokens.latents, "b (h w) c -> b c h w", h=h, w=w)

    def model_input(self, tokens: Tokens) -> torch.Tensor:
        """Tokens -> normalised latents [B, C, h, w], what ``forward`` trains on."""
        x = self._latents(tokens).float()
        return (x - self.latent_mean[None, :, None, None]) * self.latent_scale

    def _to_tokens(self, x: torch.Tensor) -> Tokens:
        x = x / self.latent_scale + self.latent_mean[None, :, None, None]
        return Tokens(latents=rearrange(x, "b c h w -> b (h w) c"))

    def denoiser(self, x: torch.Tensor, t: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction for noisy latents ``x`` [B, C, h, w] at timesteps ``t`` (one per
        row, or one for all), conditioned on the text encodings ``memory`` [B, L, text_dim]."""
        t = t.reshape(-1).expand(x.shape[0])
        if self.config.denoiser == "mmdit":
            pooled = memory.mean(1)  # SD3's pooled text vector (it modulates every block with the timestep)
            return self.net(x, encoder_hidden_states=memory, pooled_projections=pooled, timestep=t).sample
        return self.net(x, t, encoder_hidden_states=memory).sample

    # ------------------------------------------------------------------ training

    def forward(self, x0: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """DDPM loss for normalised latents [B, C, h, w] (``model_input``) and text ids [B, L]."""
        memory = self.encode_text(self.drop_captions(text_ids)[0])
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.config.train_timesteps, (x0.shape[0],), device=x0.device)
        xt = self.noise_schedule.add_noise(x0, noise, t)
        target = training_target(self.noise_schedule, self.config.prediction, x0, noise, t)
        prediction = self.denoiser(xt, t, memory)
        per_row = (prediction.float() - target.float()).pow(2).mean((1, 2, 3))
        if self.config.snr_gamma > 0:
            from diffusers.training_utils import compute_snr

            snr, gamma = compute_snr(self.noise_schedule, t), self.config.snr_gamma
            if self.config.prediction == "epsilon":
                per_row = per_row * (gamma / snr).clamp(max=1)  # min(SNR, gamma) / SNR, finite at SNR 0
            elif self.config.prediction == "v_prediction":
                per_row = per_row * snr.clamp(max=gamma) / (snr + 1)
            else:
                per_row = per_row * snr.clamp(max=gamma)
        return {"loss": per_row.mean()}

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, text_ids: torch.Tensor, sampling: SamplingConfig | None = None,
               known: torch.Tensor | None = None) -> Tokens:
        """Latent tokens for text ids [B, L] in ``sampling.steps`` denoising steps (default
        ``config.steps``) of ``sampling.scheduler`` (default ``config.scheduler``); also cfg_scale
        and seed (temperature, top_k and top_p do not apply to diffusion)."""
        sampling, rows, gen = self.start_sampling(text_ids, sampling)
        if sampling.budget is not None:
            raise ValueError(f"budget: only autoregressive generators (dalle, parti) stop early; {self.registry_name} "
                             "draws every token at once")
        if known is not None:
            raise ValueError("editing (--init / --box) keeps token ids; use a token generator (dalle, parti or muse)")
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
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    (h, w), c = spec.grid, spec.latent_dim
    if config.denoiser == "mmdit":
        if config.width % config.heads:
            raise ValueError(f"width {config.width} must be divisible by heads {config.heads}")
        if h != w or h % config.patch:
            raise ValueError(f"the mmdit denoiser needs a square latent grid divisible by patch {config.patch}, got {h}x{w}")
        return SD3Transformer2DModel(
            sample_size=h, patch_size=config.patch, in_channels=c, out_channels=c, num_layers=config.depth,
            attention_head_dim=config.width // config.heads, num_attention_heads=config.heads,
            joint_attention_dim=config.text_dim, caption_projection_dim=config.width,
            pooled_projection_dim=config.text_dim, pos_embed_max_size=h // config.patch,
        )
    levels = len(config.channels)
    return UNet2DConditionModel(
        sample_size=spec.grid, in_channels=c, out_channels=c,
        block_out_channels=tuple(config.channels), layers_per_block=config.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * levels, up_block_types=("CrossAttnUpBlock2D",) * levels,
        cross_attention_dim=config.text_dim, attention_head_dim=config.heads,
        norm_num_groups=min(32, *(ch // 4 for ch in config.channels)),
    )


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("generator", name, "diffusion", description, **fields)


_preset("diffusion-shapes", "CPU: UNet 64-128 with cross-attention on 8x8 latents, 20 DPM-Solver++ steps")
_preset("diffusion-tiny", "test size: UNet 16-32, 1-block prompt encoder", channels=(16, 32), heads=2, text_dim=32,
        text_depth=1, text_heads=2, steps=4)
_preset("diffusion-base", "GPU: UNet 256-512-768 x 2 layers on 32x32x4 latents (ae-f8-256), v-prediction",
        channels=(256, 512, 768), layers_per_block=2, heads=8, text_dim=512, text_depth=6, text_heads=8,
        prediction="v_prediction")
