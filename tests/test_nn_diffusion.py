"""The diffusion process shared by the latent generator and the pixel decoder: schedules, the
training loss, x_0 clipping, and the config block both models inherit."""

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from trilemma import checkpoint, registry
from trilemma.decoders.token_diffusion import TokenDiffusionConfig
from trilemma.generators import sampling
from trilemma.generators.diffusion import DiffusionConfig
from trilemma.nn import diffusion
from trilemma.nn.diffusion import (PREDICTIONS, SCHEDULERS, NoiseScheduleConfig, check_noise_schedule,
                                   clip_prediction, denoising_loss, make_scheduler)


def noised(prediction, t=700, scale=1.0):
    """The training schedule, x_0, x_t and the true target of ``prediction`` at timestep ``t``."""
    schedule = make_scheduler("ddpm", NoiseScheduleConfig(prediction=prediction))
    torch.manual_seed(2)
    x0 = torch.randn(2, 4, 4, 4) * scale
    noise = torch.randn_like(x0)
    t = torch.tensor([t, t])
    xt = schedule.add_noise(x0, noise, t)
    target = {"epsilon": noise, "v_prediction": schedule.get_velocity(x0, noise, t), "sample": x0}
    return schedule, x0, xt, target[prediction]


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_noising_then_a_step_with_the_true_target_recovers_x0(prediction):
    _, x0, xt, target = noised(prediction)
    sampler = make_scheduler("ddim", NoiseScheduleConfig(prediction=prediction))
    sampler.set_timesteps(1000)  # every training timestep, so 700 is one of them
    out = sampler.step(target, 700, xt)
    assert torch.allclose(out.pred_original_sample, x0, atol=1e-4)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_clipping_bounds_the_implied_x0_and_keeps_a_prediction_inside_the_bound(prediction):
    _, x0, xt, target = noised(prediction, t=950, scale=2.0)  # some of x_0 beyond the bound 3
    sampler = make_scheduler("ddim", NoiseScheduleConfig(prediction=prediction))
    sampler.set_timesteps(1000)
    clipped = clip_prediction(target, xt, torch.tensor(950), sampler, 3.0)
    implied = sampler.step(clipped, 950, xt).pred_original_sample
    assert torch.allclose(implied, x0.clamp(-3, 3), atol=1e-3) and (x0.abs() > 3).any()
    assert torch.allclose(clip_prediction(target, xt, torch.tensor(950), sampler, 100.0), target, atol=1e-4)


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("name", SCHEDULERS)
def test_sampling_from_pure_noise_starts_at_the_last_training_timestep(name, steps):
    # diffusers' DDIM default ("leading" spacing) started 10 steps at t = 900 and 50 at t = 980:
    # pure noise read as a less noisy level (Lin et al. 2024, "Common Diffusion Noise Schedules and
    # Sample Steps are Flawed").
    config = NoiseScheduleConfig(train_timesteps=1000)
    sampler = make_scheduler(name, config)
    sampler.set_timesteps(steps)
    t = sampler.timesteps
    assert len(t) == steps and t[0] == config.train_timesteps - 1 and (t[1:] < t[:-1]).all()


def oracle(schedule, x0, prediction, seen):
    """A denoiser that knows x_0: its exact answer for each noisy input; records what it was asked."""

    def model(xt, t):
        a = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        noise = (xt - a.sqrt() * x0) / (1 - a).sqrt()
        seen.update(xt=xt, t=t)
        return {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0, "sample": x0}[prediction]

    return model


@pytest.mark.parametrize("snr_gamma", [None, 0.0, 5.0])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_loss_is_zero_for_the_true_target_and_draws_noise_then_timesteps(prediction, snr_gamma):
    schedule = make_scheduler("ddpm", NoiseScheduleConfig(prediction=prediction))
    x0, seen = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1)), {}
    torch.manual_seed(9)
    loss = denoising_loss(oracle(schedule, x0, prediction, seen), schedule, x0, prediction, snr_gamma)
    assert loss.item() < 1e-6
    torch.manual_seed(9)  # the same draws, in the same order, from the global RNG: seeded runs repeat
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (3,))
    assert torch.equal(seen["t"], t) and torch.equal(seen["xt"], schedule.add_noise(x0, noise, t))


def test_the_per_row_loss_is_the_plain_one_and_min_snr_weights_lower_it():
    schedule = make_scheduler("ddpm", NoiseScheduleConfig(prediction="epsilon"))
    x0 = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(1))

    def loss(gamma):
        torch.manual_seed(5)
        return denoising_loss(lambda xt, t: torch.zeros_like(xt), schedule, x0, "epsilon", gamma).item()

    plain = loss(None)
    assert loss(0.0) == pytest.approx(plain, rel=1e-6)
    assert loss(1e9) == pytest.approx(plain, rel=1e-6)  # min(SNR, gamma) / SNR = 1 at every level
    assert loss(1.0) < plain


def test_bad_names_are_refused_naming_the_field_and_the_choices():
    with pytest.raises(ValueError, match="prediction must be one of"):
        check_noise_schedule(NoiseScheduleConfig(prediction="noise"))
    with pytest.raises(ValueError, match="unknown scheduler 'euler'; choose one of dpm\\+\\+, ddim"):
        check_noise_schedule(NoiseScheduleConfig(scheduler="euler"))
    assert diffusion.SCHEDULERS == sampling.SCHEDULERS  # SamplingConfig checks the same names


@pytest.mark.parametrize("config, clip_x0", [(DiffusionConfig, 3.0), (TokenDiffusionConfig, 1.0)])
def test_each_model_inherits_the_schedule_flat_keeping_its_own_defaults(config, clip_x0):
    assert issubclass(config, NoiseScheduleConfig) and config().clip_x0 == clip_x0
    shared = [f.name for f in dataclasses.fields(NoiseScheduleConfig)]
    data = checkpoint.config_to_dict(config(prediction="v_prediction", steps=7))
    assert set(shared) <= set(data) and data["prediction"] == "v_prediction"  # flat, as config.json was
    reordered = dict(reversed(list(data.items())))  # a checkpoint written with the fields in another order
    loaded = checkpoint.config_from_dict(config, reordered)
    registry.check_config(loaded)
    assert loaded == config(prediction="v_prediction", steps=7)
    with pytest.raises(ValueError, match="config field steps"):
        registry.check_config(config(steps=-1))


def test_the_shared_floor_imports_no_model_family():
    tree = ast.parse(Path(diffusion.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith(("trilemma.generators", "trilemma.decoders"))}
