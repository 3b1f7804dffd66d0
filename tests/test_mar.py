"""MAR: a bidirectional transformer over continuous latents, each token drawn by a per-token
diffusion head, revealed in a random order on Muse's schedule (the head's process, schedules, loss
and denoise loop, is tested in test_nn_diffusion.py)."""

import pytest
import torch

from conftest import fit_batch, fixed_loss
from trilemma import checkpoint, registry
from trilemma.data.text import TextTokenizer
from trilemma.generators.sampling import SamplingConfig as S
from trilemma.generators.sampling import masked_count
from trilemma.tokens import Tokens, TokenSpec

SPEC = TokenSpec("continuous", 16, latent_dim=4, grid=(4, 4))
SHAPES = TokenSpec("continuous", 64, latent_dim=4, grid=(8, 8))  # ae-f4-shapes: 8x8 latents of 4 channels
CAPTIONS = ["a large red circle at the top left", "a small blue square in the center"]
MEAN, SCALE = 0.5, 3.0  # the test latents' units: not the normalised ones


def tiny(spec=SPEC, **cfg):
    """mar-tiny, its head's zero-initialised layers made random: a new head predicts 0 for every
    token, so the samples would not depend on the noise, the prompt or the order."""
    text = TextTokenizer.build(CAPTIONS, max_length=10)
    torch.manual_seed(0)
    gen = registry.build("generator", "mar-tiny", spec=spec, text=text, **cfg)
    with torch.no_grad():
        for p in gen.head.parameters():
            if not p.any():
                p.normal_(std=0.1)
    return gen, text


def latents(b=2, seed=1, spec=SPEC):
    g = torch.Generator().manual_seed(seed)
    return Tokens(latents=torch.randn(b, spec.max_tokens, spec.latent_dim, generator=g) * SCALE + MEAN)


@pytest.mark.parametrize("name", [n for n in registry.preset_names("generator") if n.startswith("mar-")])
def test_every_preset_builds_for_the_latents_it_is_meant_for(name):
    text = TextTokenizer.build(CAPTIONS, max_length=10)
    if name == "mar-base":  # 190M parameters: built on the meta device, structure without memory
        with torch.device("meta"):
            for spec in (TokenSpec("continuous", 1024, latent_dim=4, grid=(32, 32)),
                         TokenSpec("continuous", 256, latent_dim=16, grid=(16, 16))):
                gen = registry.build("generator", name, spec=spec, text=text)
                assert gen.head.output.out_features == spec.latent_dim and gen.config.width == 768
        return
    gen = registry.build("generator", name, spec=SHAPES, text=text)
    assert gen.head.output.out_features == 4 and registry.get_preset("generator", name).description.split(":")[0] in (
        "CPU", "test size")
    out = gen.sample(text.encode(CAPTIONS), S(seed=0, steps=2, cfg_scale=2.0))
    assert out.latents.shape == (2, 64, 4) and torch.isfinite(out.latents).all()


def test_a_training_step_runs_and_adamw_lowers_the_loss_on_a_batch():
    text = TextTokenizer.build(CAPTIONS, max_length=10)
    torch.manual_seed(0)
    gen = registry.build("generator", "mar-tiny", spec=SPEC, text=text, cond_drop_prob=0.0)
    tokens, ids = latents(), text.encode(CAPTIONS)
    gen.fit(tokens)
    before = fixed_loss(gen, tokens, ids)
    out = fit_batch(gen, tokens, ids, 150)
    assert 0 < out["masked_fraction"] <= 1
    assert fixed_loss(gen, tokens, ids) < 0.5 * before


@pytest.mark.parametrize("steps", [1, 4, 7, 16])
def test_each_step_reveals_the_scheduled_count_in_a_random_order_until_nothing_is_masked(steps, monkeypatch):
    gen, text = tiny()
    n, b = SPEC.max_tokens, len(CAPTIONS)
    counts = []

    def fake_draw(z, count, sampling, scheduler, g):  # each revealed token gets its step's number
        counts.append(count)
        return torch.full((count, SPEC.latent_dim), float(len(counts)))

    monkeypatch.setattr(gen, "draw_tokens", fake_draw)
    out = gen.normalise(gen.sample(text.encode(CAPTIONS), S(seed=0, steps=steps)))
    step_of = out[..., 0]  # [B, N]: the step that revealed each position
    left, expected = n, []
    for k in range(steps):
        now = masked_count(k, steps, n, left)
        expected.append(left - now)
        left = now
    assert left == 0 and counts == [b * e for e in expected]
    for row in step_of:  # every position revealed exactly once, each step the scheduled count
        revealed = torch.bincount(row.long(), minlength=steps + 1)[1:]
        assert row.min() >= 1 and torch.equal(revealed, torch.tensor(expected))
    assert steps == 1 or not torch.equal(step_of[0], step_of[1])  # each row has its own order


def test_guidance_runs_the_empty_prompt_rows_only_when_asked():
    gen, text = tiny()
    ids = text.encode(CAPTIONS)
    rows, head_rows = [], []
    gen.transformer.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    gen.head.register_forward_hook(lambda m, i, o: head_rows.append(i[0].shape[0]))
    plain = gen.sample(ids, S(seed=3, cfg_scale=1.0))
    assert set(rows) == {2}  # the conditional rows only
    assert sum(head_rows) == 2 * SPEC.max_tokens * gen.config.head_steps  # each token denoised once
    rows.clear(), head_rows.clear()
    guided = gen.sample(ids, S(seed=3, cfg_scale=3.0))
    assert set(rows) == {4}  # [cond; empty] stacked
    assert sum(head_rows) == 2 * 2 * SPEC.max_tokens * gen.config.head_steps  # the head sees both z's
    assert not torch.allclose(guided.latents, plain.latents)


def test_seeded_sampling_repeats_and_another_seed_differs():
    gen, text = tiny()
    ids = text.encode(CAPTIONS)
    a, b = gen.sample(ids, S(seed=5)), gen.sample(ids, S(seed=5))
    assert torch.equal(a.latents, b.latents) and a.latents.shape == (2, 16, 4)
    assert not torch.allclose(gen.sample(ids, S(seed=6)).latents, a.latents)
    for scheduler in ("ddim", "dpm++"):
        assert torch.isfinite(gen.sample(ids, S(seed=0, temperature=0.5, scheduler=scheduler)).latents).all()


def test_temperature_zero_starts_each_token_at_the_noise_mean(monkeypatch):
    gen, text = tiny()
    starts = []
    original = gen.head.forward
    monkeypatch.setattr(gen.head, "forward", lambda x, t, z: starts.append(x.clone()) or original(x, t, z))
    gen.sample(text.encode(CAPTIONS), S(seed=0, temperature=0, steps=1))
    assert torch.equal(starts[0], torch.zeros_like(starts[0]))  # the first denoising step's input


def test_samples_are_in_the_tokenizers_units_and_normalisation_round_trips(monkeypatch, tmp_path):
    gen, text = tiny()
    tokens = latents(b=64)
    gen.fit(tokens)
    assert gen.latent_mean.tolist() == pytest.approx([MEAN] * 4, abs=0.1)
    assert gen.latent_scale.item() == pytest.approx(1 / SCALE, rel=0.05)
    x = gen.model_input(tokens)
    assert x.mean().abs() < 0.05 and (x.std() - 1).abs() < 0.05
    assert torch.allclose(gen.to_tokens(x).latents, tokens.latents, atol=1e-5)
    # A head that draws the normalised 0 everywhere: the samples are the tokenizer's mean
    monkeypatch.setattr(gen, "draw_tokens", lambda z, count, *_: torch.zeros(count, 4))
    out = gen.sample(text.encode(CAPTIONS), S(seed=0))
    assert torch.equal(out.latents, gen.latent_mean.expand(2, 16, 4))
    monkeypatch.undo()
    loaded = checkpoint.load(checkpoint.save(gen, tmp_path / "g"), kind="generator")
    assert torch.equal(loaded.latent_scale, gen.latent_scale) and torch.equal(loaded.latent_mean, gen.latent_mean)
    ids = text.encode(CAPTIONS)
    assert torch.equal(loaded.sample(ids, S(seed=1)).latents, gen.sample(ids, S(seed=1)).latents)


def test_tokens_without_a_grid_are_modelled_in_1d():
    spec = TokenSpec("continuous", 12, latent_dim=3)
    gen, text = tiny(spec)
    gen.loss(latents(spec=spec), text.encode(CAPTIONS))["loss"].backward()
    assert gen.sample(text.encode(CAPTIONS), S(seed=0, cfg_scale=2.0)).latents.shape == (2, 12, 3)
    with pytest.raises(ValueError, match="`tokens` must hold 12 latents of 3 channels"):
        gen.model_input(latents(spec=SPEC))


def test_a_discrete_tokenizer_and_bad_fields_are_refused_naming_them():
    with pytest.raises(ValueError) as err:
        tiny(TokenSpec("discrete", 16, vocab_size=32, grid=(4, 4)))
    assert str(err.value) == ("mar models continuous tokens, but this tokenizer makes discrete tokens; "
                              "pick a continuous tokenizer (e.g. ae-f4-shapes)")
    with pytest.raises(ValueError, match="tokens carry only ids"):
        tiny()[0].loss(Tokens(ids=torch.zeros(2, 16, dtype=torch.long)), torch.zeros(2, 10, dtype=torch.long))
    for field, value, message in [("head_prediction", "noise", "`head_prediction` must be one of epsilon"),
                                  ("head_scheduler", "euler", "`head_scheduler` must be one of"),
                                  ("diffusion_batch_mul", 0, "`diffusion_batch_mul` must be >= 1"),
                                  ("schedule", "cubic", "unknown mask schedule 'cubic'")]:
        with pytest.raises(ValueError, match=message):
            tiny(**{field: value})
