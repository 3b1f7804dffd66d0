"""The diffusion generator: diffusers' UNet or MMDiT on continuous latents, our prompt encoder (the
process itself, schedules, loss and clipping, is tested in test_nn_diffusion.py)."""

import pytest
import torch

from conftest import fit_batch, fixed_loss
from trilemma import checkpoint, registry
from trilemma.data.text import TextTokenizer
from trilemma.generators.sampling import SamplingConfig
from trilemma.tokens import Tokens, TokenSpec

SPEC = TokenSpec("continuous", 16, latent_dim=4, grid=(4, 4))
CAPTIONS = ["a large red circle at the top left", "a small blue square in the center"]


def tiny(**cfg):
    text = TextTokenizer.build(CAPTIONS, max_length=10)
    torch.manual_seed(0)
    return registry.build("generator", "diffusion-tiny", spec=SPEC, text=text, **cfg), text


def latents(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Tokens(latents=torch.randn(b, 16, 4, generator=g) * 3 + 0.5)


def test_guidance_scale_one_is_the_conditional_model_and_sampling_is_seeded():
    gen, text = tiny()
    ids = text.encode(CAPTIONS)
    a = gen.sample(ids, SamplingConfig(cfg_scale=1.0, seed=3))
    calls = []
    gen.net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    b = gen.sample(ids, SamplingConfig(cfg_scale=1.0, seed=3))
    assert torch.equal(a.latents, b.latents) and set(calls) == {2}  # conditional rows only
    guided = gen.sample(ids, SamplingConfig(cfg_scale=3.0, seed=3))
    assert calls[-1] == 4 and not torch.allclose(guided.latents, a.latents)  # [cond; empty] stacked
    for sampler in ("ddim", "dpm++"):
        out = gen.sample(ids, SamplingConfig(seed=0, steps=3, scheduler=sampler))
        assert out.latents.shape == (2, 16, 4) and torch.isfinite(out.latents).all()


MMDIT = dict(denoiser="mmdit", width=32, heads=2, depth=1)


@pytest.mark.parametrize("cfg", [{}, MMDIT], ids=["unet", "mmdit"])
def test_a_tiny_model_overfits_one_batch(cfg):
    gen, text = tiny(cond_drop_prob=0.0, **cfg)
    tokens, ids = latents(), text.encode(CAPTIONS)
    gen.fit(tokens)
    before = fixed_loss(gen, tokens, ids)
    fit_batch(gen, tokens, ids, 200)
    assert fixed_loss(gen, tokens, ids) < 0.5 * before


def test_min_snr_weights_lower_the_loss_and_a_huge_gamma_is_the_plain_loss():
    gen, text = tiny(prediction="epsilon")
    tokens, ids = latents(), text.encode(CAPTIONS)
    gen.fit(tokens)

    def loss(gamma):
        gen.config.snr_gamma = gamma
        torch.manual_seed(5)
        with torch.no_grad():
            return gen.loss(tokens, ids)["loss"].item()

    plain = loss(0.0)
    assert loss(1e9) == pytest.approx(plain, rel=1e-6)  # min(SNR, gamma) / SNR = 1 at every level
    assert loss(1.0) < plain


def test_the_mmdit_denoiser_samples_latents_of_the_grid():
    gen, text = tiny(**MMDIT)
    out = gen.sample(text.encode(CAPTIONS), SamplingConfig(cfg_scale=3.0, seed=0, steps=2))
    assert out.latents.shape == (2, 16, 4) and torch.isfinite(out.latents).all()
    with pytest.raises(ValueError, match="denoiser must be one of"):
        tiny(denoiser="dit")


def test_the_latent_scale_is_measured_and_saved(tmp_path):
    gen, _ = tiny()
    tokens = latents(b=64)
    gen.fit(tokens)
    x = gen.model_input(tokens)
    assert x.mean().abs() < 0.05 and (x.std() - 1).abs() < 0.05  # normalised
    assert gen.latent_scale.item() == pytest.approx(1 / 3, rel=0.1)
    loaded = checkpoint.load(checkpoint.save(gen, tmp_path / "g"), kind="generator")
    assert torch.equal(loaded.latent_scale, gen.latent_scale) and torch.equal(loaded.latent_mean, gen.latent_mean)
    back = gen._to_tokens(x)  # normalisation inverts exactly
    assert torch.allclose(back.latents, tokens.latents, atol=1e-5)


def test_a_discrete_tokenizer_is_refused_with_advice():
    with pytest.raises(ValueError, match="continuous") as err:
        registry.build("generator", "diffusion-tiny", spec=TokenSpec("discrete", 16, vocab_size=32, grid=(4, 4)),
                       text=TextTokenizer.build(CAPTIONS))
    assert "ae-f4-shapes" in str(err.value)


def test_bad_sampler_names_the_option():
    with pytest.raises(ValueError, match="scheduler"):
        SamplingConfig(scheduler="euler")
    with pytest.raises(ValueError, match="unknown scheduler 'euler'"):
        tiny(scheduler="euler")  # a config's default sampler fails when the model is built


def test_editing_is_refused_naming_the_argument():
    gen, text = tiny()
    with pytest.raises(ValueError, match="known") as err:
        gen.sample(text.encode(CAPTIONS), SamplingConfig(seed=0), known=torch.zeros(2, 16, dtype=torch.long))
    assert "--" not in str(err.value)
