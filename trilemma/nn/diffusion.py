"""The diffusion process, apart from any network: noise for training, the loss, the sampling loop.

Training noises data with DDPM (Ho et al. 2020, "Denoising Diffusion Probabilistic Models") on a
beta schedule, the cosine one by default (Nichol & Dhariwal 2021), and the denoiser learns to
predict the noise epsilon, the velocity v (Salimans & Ho 2022) or x_0 itself; its loss may weigh
each noise level by Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
Weighting Strategy"). Sampling walks the schedule back with DDIM (Song et al. 2021) or
DPM-Solver++ 2M (Lu et al. 2022), bounding the x_0 each prediction implies (x_0 clipping, DDIM's
``clip_sample`` and Imagen's static thresholding, Saharia et al. 2022, made scheduler-independent).
The schedulers are diffusers'; ``denoise`` is the loop, in view.

``NoiseScheduleConfig`` holds the settings every diffusion model here shares; a model's config
inherits it, so its ``config.json`` stays flat. Used by the latent diffusion generator
(generators/diffusion.py) and the token-conditioned pixel decoder (decoders/token_diffusion.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

PREDICTIONS = ("epsilon", "v_prediction", "sample")
SCHEDULERS = ("dpm++", "ddim")  # the samplers; generators.sampling.SCHEDULERS checks SamplingConfig by the same names

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t [B, ...], timesteps) -> prediction [B, ...]


@dataclass
class NoiseScheduleConfig:
    """The noise a denoiser is trained on and the sampler that walks it back."""

    # What the denoiser predicts: "epsilon", "v_prediction" or "sample" (x_0). An x_0 loss weighs the
    # high noise levels most, where the layout is decided; epsilon's is near zero there.
    prediction: str = "sample"
    train_timesteps: int = 1000  # DDPM noise levels
    beta_schedule: str = "squaredcos_cap_v2"  # diffusers' name for the cosine schedule (Nichol & Dhariwal 2021)
    scheduler: str = "dpm++"  # default sampler: "dpm++" (DPM-Solver++ 2M) or "ddim"
    steps: int = 20  # default denoising steps (the sampling option ``steps`` overrides)
    clip_x0: float = 0.0  # bound on the x_0 a prediction implies, in the data's units (0 = off)


def check_noise_schedule(config: NoiseScheduleConfig) -> None:
    """Refuse an unknown prediction, sampler or beta schedule when a model is built, not after training."""
    if config.prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {config.prediction!r}")
    make_scheduler(config.scheduler, config)


def make_scheduler(name: str, config: NoiseScheduleConfig) -> Any:
    """A diffusers scheduler over ``config``'s noise schedule (``train_timesteps``, ``beta_schedule``,
    ``prediction``): "ddpm" (training), "ddim" or "dpm++" (sampling).

    Both samplers start from the last training timestep, where pure noise is what the denoiser was
    trained on (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"):
    DDIM with "trailing" spacing (diffusers' default "leading" started 10 steps at t = 900), and
    DPM-Solver++ with its default "linspace" (999 down, then a last step to sigma 0)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler  # deferred: a 2-3 s import

    common = dict(num_train_timesteps=config.train_timesteps, beta_schedule=config.beta_schedule,
                  prediction_type=config.prediction)
    if name == "ddpm":
        return DDPMScheduler(**common)
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing")
    if name == "dpm++":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


# ---------------------------------------------------------------------------------------- training


def training_target(schedule: Any, prediction: str, x0: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor) -> torch.Tensor:
    """What a denoiser of ``prediction`` type learns to output for x_t = ``schedule.add_noise(x0,
    noise, t)``: the noise, the velocity (Salimans & Ho 2022) or x_0 itself."""
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return schedule.get_velocity(x0, noise, t)
    return x0


def min_snr_weighted(per_row: torch.Tensor, schedule: Any, prediction: str, t: torch.Tensor,
                     gamma: float) -> torch.Tensor:
    """Per-row losses [B] at timesteps ``t`` weighted by Min-SNR-gamma: min(SNR, gamma) over SNR
    (epsilon), SNR + 1 (v) or 1 (x_0), so the nearly clean levels, easy and many, stop dominating
    the gradient."""
    from diffusers.training_utils import compute_snr  # deferred: a 2-3 s import

    snr = compute_snr(schedule, t)
    if prediction == "epsilon":
        return per_row * (gamma / snr).clamp(max=1)  # min(SNR, gamma) / SNR, finite at SNR 0
    if prediction == "v_prediction":
        return per_row * snr.clamp(max=gamma) / (snr + 1)
    return per_row * snr.clamp(max=gamma)


def denoising_loss(model: Denoiser, schedule: Any, x0: torch.Tensor, prediction: str,
                   snr_gamma: float | None = None) -> torch.Tensor:
    """The DDPM training loss of ``model`` on clean data ``x0`` [B, ...]: draws the noise, then one
    timestep per row (uniform over ``schedule``'s, a diffusers DDPM scheduler), both from the global
    torch RNG, and scores ``model(x_t, t)`` against ``training_target`` by squared error.

    ``snr_gamma`` None: the mean over every element. A number: each row's mean, weighted by
    ``min_snr_weighted`` when > 0, then the mean over rows. At 0 the two are the same loss up to
    rounding; the diffusion generator takes the per-row form, the pixel decoder the plain one."""
    noise = torch.randn_like(x0)
    t = torch.randint(0, schedule.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
    xt = schedule.add_noise(x0, noise, t)
    target = training_target(schedule, prediction, x0, noise, t)
    output, target = model(xt, t).float(), target.float()
    if snr_gamma is None:
        return F.mse_loss(output, target)
    per_row = (output - target).pow(2).mean(tuple(range(1, output.ndim)))
    if snr_gamma > 0:
        per_row = min_snr_weighted(per_row, schedule, prediction, t, snr_gamma)
    return per_row.mean()


# ---------------------------------------------------------------------------------------- sampling


def denoise(model: Denoiser, scheduler: Any, noise: torch.Tensor, steps: int,
            generator: torch.Generator | None = None, clip_x0: float = 0.0) -> torch.Tensor:
    """The sampling loop: from pure ``noise`` (scaled by the scheduler's initial sigma) through
    ``steps`` scheduler steps, each asking ``model(x_t, t)`` for its prediction (of the type the
    scheduler was configured with). ``clip_x0`` > 0 bounds the x_0 each prediction implies (see
    ``clip_prediction``). Returns x_0."""
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        prediction = model(scheduler.scale_model_input(x, t), t)
        if clip_x0 > 0:
            prediction = clip_prediction(prediction, x, t, scheduler, clip_x0)
        x = scheduler.step(prediction, t, x, generator=generator).prev_sample
    return x


def clip_prediction(prediction: torch.Tensor, x: torch.Tensor, t: torch.Tensor, scheduler: Any,
                    limit: float) -> torch.Tensor:
    """The prediction (epsilon, v or x_0) whose implied x_0 is clamped to [-limit, limit].

    Near the end of the cosine schedule alpha_bar is ~0, so x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
    multiplies any error in eps by up to ~1/sqrt(a), and the first sampling steps can put x_0 far
    outside the data. Bounding x_0 (DDIM's ``clip_sample``, made scheduler-independent) keeps them in it."""
    if scheduler.config.prediction_type == "sample":  # the prediction is x_0 itself
        return prediction.clamp(-limit, limit)
    a = scheduler.alphas_cumprod.to(x.device)[int(t)].float()
    s_a, s_1a = a.sqrt(), (1 - a).sqrt()
    if scheduler.config.prediction_type == "epsilon":
        x0 = ((x - s_1a * prediction) / s_a).clamp(-limit, limit)
        return (x - s_a * x0) / s_1a
    x0 = (s_a * x - s_1a * prediction).clamp(-limit, limit)
    return (s_a * x - x0) / s_1a
