"""The multi-scale residual VQ tokenizer (VAR): scales, prefixes, contributions, training."""

import pytest
import torch

from trilemma import checkpoint, registry
from trilemma.data import load_dataset
from trilemma.tokens import Tokens

PRESETS = [n for n in registry.preset_names("tokenizer") if registry.get_preset("tokenizer", n).model == "msvq"]


@pytest.fixture
def tok():
    torch.manual_seed(0)
    return registry.build("tokenizer", "msvq-tiny").eval()


def test_presets_are_registered():
    assert {"msvq-tiny", "msvq-f4-shapes", "msvq-f16-256"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_with_its_spec(name, images):
    torch.manual_seed(0)
    tok = registry.build("tokenizer", name)
    scales = tuple(tok.config.scales)
    spec = tok.spec
    assert spec.scales == scales and spec.max_tokens == sum(s * s for s in scales)
    assert spec.discrete and spec.vocab_size == tok.config.codebook_size and spec.grid is None
    assert scales[-1] == tok.config.image_size // tok.config.factor
    if tok.image_size == images.shape[-1]:  # the 256 preset only constructs: a forward there is slow
        out = tok(images)
        assert out.recon.shape == images.shape and out.tokens.ids.shape == (len(images), spec.max_tokens)
        assert set(out.losses) == {"commit", "phi"}
        assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
        assert out.usage.shape == (spec.vocab_size,) and out.usage.sum() == out.tokens.ids.numel()


def test_every_prefix_of_scales_decodes(tok, images):
    tokens = tok.encode(images)
    ids = tokens.ids
    assert ids.dtype == torch.long and ids.min() >= 0 and ids.max() < tok.config.codebook_size
    full = tok.decode(tokens)
    assert full.shape == images.shape
    lengths = [sum(s * s for s in tok.config.scales[:k]) for k in range(1, len(tok.config.scales) + 1)]
    assert list(tok.quantizer.prefix_lengths) == lengths
    for n in lengths[:-1]:
        coarse = tok.decode(Tokens(ids=ids[:, :n]))
        assert coarse.shape == images.shape
        assert not torch.allclose(coarse, full, atol=1e-3)


@pytest.mark.parametrize("length", [0, 2, 84, 86])
def test_a_partial_scale_is_refused_naming_the_valid_lengths(tok, images, length):
    ids = torch.zeros(2, length, dtype=torch.long)
    with pytest.raises(ValueError, match=r"`ids` must hold whole scales .*\(1, 5, 21, 85\), got " + str(length)):
        tok.decode(Tokens(ids=ids))


def test_out_of_range_ids_and_latents_are_refused(tok):
    with pytest.raises(ValueError, match=r"`ids` must be in \[0, 64\)"):
        tok.decode(Tokens(ids=torch.full((1, 5), 64)))
    with pytest.raises(ValueError, match="do not fit"):
        tok.decode(Tokens(latents=torch.zeros(1, 85, 8)))


def test_the_latent_is_the_sum_of_the_scale_contributions(tok, images):
    with torch.no_grad():
        q = tok.quantizer(tok.encoder(images))
        parts = tok.scale_contributions(q.ids)
        total = torch.stack(parts).sum(0)
        assert len(parts) == len(tok.config.scales)
        assert all(p.shape == q.quantized.shape for p in parts)
        assert torch.allclose(total, q.quantized, atol=1e-5)
        assert torch.equal(tok.decode(Tokens(ids=q.ids)), tok.decoder(total))
        # a prefix's contributions are the first ones of the full list
        coarse = tok.scale_contributions(q.ids[:, :5])
        assert len(coarse) == 2 and all(torch.equal(a, b) for a, b in zip(coarse, parts))


def test_reencoding_a_reconstruction_is_mostly_stable(images):
    torch.manual_seed(0)
    tok = registry.build("tokenizer", "msvq-tiny")
    _train(tok, steps=15)
    tok.eval()
    ids = tok.encode(images).ids
    again = tok.encode(tok.decode(Tokens(ids=ids)).clamp(-1, 1)).ids
    assert (again[:, :1] == ids[:, :1]).float().mean() >= 0.5  # the coarsest scale survives a round trip


def test_checkpoint_round_trip_gives_identical_ids(images, tmp_path):
    torch.manual_seed(0)
    tok = registry.build("tokenizer", "msvq-tiny")
    tok(images)  # a training step moves the EMA codebook: the buffers must travel too
    tok.eval()
    loaded = checkpoint.load(checkpoint.save(tok, tmp_path / "msvq"), kind="tokenizer")
    assert loaded.config == tok.config and loaded.spec == tok.spec
    assert torch.equal(loaded.encode(images).ids, tok.encode(images).ids)


def _train(tok, steps, batch=16):
    data = load_dataset("shapes", split="train", size=32)
    pool = torch.stack([data[i]["image"] for i in range(64)])
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    recon_losses, usage = [], None
    tok.train()
    for _ in range(steps):
        x = pool[torch.randint(0, len(pool), (batch,), generator=generator)]
        out = tok(x)
        recon = (out.recon - x).pow(2).mean()
        opt.zero_grad()
        (recon + sum(out.losses.values())).backward()
        opt.step()
        recon_losses.append(recon.item())
        usage = out.usage
    return recon_losses, usage


def test_a_few_steps_lower_the_reconstruction_loss():
    torch.manual_seed(0)
    tok = registry.build("tokenizer", "msvq-tiny")
    losses, usage = _train(tok, steps=30)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert (usage > 0).sum() >= 0.5 * tok.config.codebook_size  # the codebook has not collapsed


@pytest.mark.parametrize("scales", [(1, 2, 2, 8), (1, 4, 2, 8), (1, 2, 4), (1, 2, 4, 16), (0, 8), ()])
def test_bad_scales_are_refused_naming_the_field(scales):
    with pytest.raises(ValueError, match="`scales` must be strictly increasing .* latent side 8"):
        registry.build("tokenizer", "msvq-tiny", scales=scales)


def test_the_tradeoff_study_reads_a_multiscale_tokenizer_at_every_prefix_of_its_scales(tmp_path):
    from trilemma.metrics.reconstruction import evaluate_reconstruction
    from trilemma.studies.images import load_images
    from trilemma.studies.tradeoff import tradeoff

    torch.manual_seed(0)
    tok = registry.build("tokenizer", "msvq-tiny").eval()
    rows = tradeoff([checkpoint.save(tok, tmp_path / "ms" / "model")], n=6, features=None, lpips=False, progress=False)
    assert [r["budget"] for r in rows] == [1, 5, 21, 85] and {r["curve"] for r in rows} == {"ms"}
    assert [r["bits_per_image"] for r in rows] == [k * 6 for k in (1, 5, 21, 85)]  # 64 codes: 6 bits a token
    assert [r["downsampling"] for r in rows] == [32, 16, 8, 4]
    images, _ = load_images("shapes", 6, 32, seed=0, split="test", progress=False)
    whole = evaluate_reconstruction(tok, images, lpips=False, progress=False)
    assert rows[-1]["psnr"] == pytest.approx(whole["psnr"])  # the last prefix is the tokenizer itself
    coarse = tok.at_scales(2)
    assert coarse.encode(images).ids.shape == (6, 5) and coarse.decode(coarse.encode(images)).shape == images.shape
    with pytest.raises(ValueError, match="`count` must be 1 to 4"):
        tok.at_scales(5)
