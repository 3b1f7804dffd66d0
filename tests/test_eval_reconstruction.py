"""evaluate_reconstruction: exact and lossy patch tokenizers, crafted code histograms, the keys."""

import math

import pytest
import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from trilemma import registry
from trilemma.data import load_dataset
from trilemma.metrics import scores
from trilemma.metrics.bits import effective_bits, entropy_bits, quantize
from trilemma.metrics.features import DomainFeatures
from trilemma.metrics.reconstruction import KEYS, evaluate_reconstruction, rfid_left_out
from trilemma.tokens import Tokens, TokenSpec


@pytest.fixture(scope="module")
def shapes():
    data = load_dataset("shapes", "test", length=48)
    return torch.stack([data[i]["image"] for i in range(48)])


@pytest.fixture(scope="module")
def floor():
    """48 other held-out images: rFID's real-vs-real floor."""
    data = load_dataset("shapes", "test", length=96)
    return torch.stack([data[i]["image"] for i in range(48, 96)])


@pytest.fixture(scope="module")
def features():
    torch.manual_seed(0)
    return DomainFeatures(DomainFeatures.Config(channels=(8, 16), dim=32))


def test_lossless_patch_tokenizer_is_exact(shapes, floor, features, capsys, monkeypatch):
    from trilemma.metrics import reconstruction

    monkeypatch.setattr(reconstruction, "_LPIPS", {})  # as in a fresh process: LPIPS loaded (or refused) here
    tok = registry.build("tokenizer", "patch4-8bit")
    out = evaluate_reconstruction(tok, shapes, features=features, batch_size=20, progress=False, floor_images=floor)
    assert tuple(out) == KEYS
    assert out["psnr"] == math.inf and out["ssim"] == pytest.approx(1.0)
    assert abs(out["rfid"]) < 1e-3 and out["rfid_floor"] > 0.01  # two disjoint real sets differ; a copy does not
    assert out["discrete"] is True and out["floats_per_image"] is None
    assert out["tokens_per_image"] == 64 and out["bits_per_image"] == 64 * 48 * 8
    assert 0 < out["codebook_usage"] < 0.1  # shapes use a handful of the 256 channel values
    assert 1 <= out["perplexity"] <= 256
    assert out["encode_images_per_s"] > 0 and out["decode_images_per_s"] > 0
    if out["lpips"] is None:  # backbone weights not on this machine: one line naming the file
        message = capsys.readouterr().out
        assert message.count("\n") == 1 and "vgg16-397923af.pth" in message
    else:
        assert out["lpips"] == pytest.approx(0.0, abs=1e-4)


def test_lossy_patch_tokenizer_has_known_bits_and_finite_error(shapes, floor, features):
    exact, lossy = (evaluate_reconstruction(registry.build("tokenizer", preset), shapes, features, lpips=False,
                                            progress=False, floor_images=floor) for preset in ("patch4-8bit", "patch4-4bit"))
    assert lossy["bits_per_image"] == 64 * 48 * 4 == exact["bits_per_image"] / 2
    assert 20 < lossy["psnr"] < math.inf and lossy["ssim"] < 1
    assert lossy["rfid"] > exact["rfid"]
    assert lossy["rfid_floor"] == exact["rfid_floor"]  # the floor is about the real images only
    assert lossy["lpips"] is None  # lpips=False: not computed, no message needed


def test_rfid_needs_more_images_than_feature_dimensions_and_a_floor(shapes, floor, features, capsys):
    tok = registry.build("tokenizer", "patch4-4bit")
    # 32 images in 32-d features: the covariance has rank <= 31, so no rFID (and no floor), with a notice saying why.
    few = evaluate_reconstruction(tok, shapes[:32], features, lpips=False, progress=False, floor_images=floor[:32])
    assert few["rfid"] is None and few["rfid_floor"] is None
    assert "32 images for 32-d features" in capsys.readouterr().out
    assert rfid_left_out(33, 32, 33) is None and rfid_left_out(32, 32, 32) is not None
    no_floor = evaluate_reconstruction(tok, shapes, features, lpips=False, progress=False)
    assert no_floor["rfid"] is None and "`floor_images`" in capsys.readouterr().out
    with pytest.raises(ValueError, match="`floor_images` must be as many real images"):
        evaluate_reconstruction(tok, shapes, features, lpips=False, progress=False, floor_images=floor[:40])


def test_continuous_tokenizer_counts_floats_not_bits(shapes):
    out = evaluate_reconstruction(registry.build("tokenizer", "patch4-float"), shapes, lpips=False, progress=False)
    assert out["discrete"] is False and out["floats_per_image"] == 64 * 48
    assert out["storage_bits_per_image"] == 32 * 64 * 48
    assert out["bits_per_image"] is None and out["codebook_usage"] is None and out["perplexity"] is None
    assert out["rfid"] is None and out["psnr"] == math.inf
    # Exact latents: no quantization step keeps PSNR infinite (8-bit values are not multiples of 2^-k).
    assert out["effective_bits_per_image"] is None and out["quantization_step"] is None


class ShrinkAE(nn.Module):
    """A continuous tokenizer over 4x4 images: each pixel is a token, its 3 channels the latent;
    decoding shrinks by 1% (so the unquantized PSNR is finite)."""

    spec = TokenSpec("continuous", max_tokens=16, latent_dim=3)

    def encode(self, images):
        return Tokens(latents=rearrange(images, "b c h w -> b (h w) c"))

    def decode(self, tokens):
        return 0.99 * rearrange(tokens.latents, "b (h w) c -> b c h w", h=4)


def few_valued_images() -> torch.Tensor:
    """8 images x 16 pixels = 128 values per channel: channel 0 half -0.5, half 0.5 (1 bit);
    channel 1 always 0.25 (0 bits); channel 2 a quarter -0.5, a quarter 0, a half 0.5 (1.5 bits)."""
    values = torch.empty(128, 3)
    values[:, 0] = torch.tensor([-0.5, 0.5]).repeat(64)
    values[:, 1] = 0.25
    values[:, 2] = torch.tensor([-0.5, 0.0, 0.5, 0.5]).repeat(32)
    return rearrange(values, "(b h w) c -> b c h w", b=8, h=4)


def quantized_psnr(tok, images, step):
    z = tok.encode(images).latents
    return scores.psnr(tok.decode(Tokens(latents=torch.round(z / step) * step)).clamp(-1, 1), images).mean().item()


def test_effective_bits_are_the_entropy_at_the_coarsest_step_within_a_tenth_of_a_db():
    tok, images = ShrinkAE(), few_valued_images()
    result = effective_bits(tok, images, batch_size=3)  # batches of 3: the histogram spans the whole set
    assert result.bits_per_image == pytest.approx(16 * (1 + 0 + 1.5))  # per channel entropy x 16 pixels
    reference = scores.psnr(tok.decode(tok.encode(images)), images).mean().item()
    assert result.psnr == pytest.approx(reference) and math.isfinite(reference)
    assert reference - quantized_psnr(tok, images, result.step) <= 0.1  # the chosen step costs at most 0.1 dB
    assert result.coarser_step > result.step
    assert reference - quantized_psnr(tok, images, result.coarser_step) > 0.1  # the next coarser one more
    assert result.step == 0.25  # the widest channel spans 1: 1 and 1/2 merge values; 1/4 keeps them exact
    out = evaluate_reconstruction(tok, images, lpips=False, progress=False)
    assert out["effective_bits_per_image"] == pytest.approx(40) and out["storage_bits_per_image"] == 32 * 16 * 3
    assert out["quantization_step"] == 0.25


class PoolAE(nn.Module):
    """A lossy continuous tokenizer: 4x4 mean pooling, decoded by repeating each mean."""

    spec = TokenSpec("continuous", max_tokens=64, latent_dim=3)

    def encode(self, images):
        return Tokens(latents=rearrange(F.avg_pool2d(images, 4), "b c h w -> b (h w) c"))

    def decode(self, tokens):
        return F.interpolate(rearrange(tokens.latents, "b (h w) c -> b c h w", h=8), scale_factor=4)


def test_effective_bits_of_a_lossy_autoencoder_lie_between_nothing_and_float_storage(shapes):
    result = effective_bits(PoolAE(), shapes)
    assert 0 < result.bits_per_image < 32 * 64 * 3
    assert result.psnr - result.psnr_quantized <= 0.1 < result.psnr - result.coarser_psnr
    assert result.coarser_step == pytest.approx(result.step * 2**0.25)  # quarter octaves near the answer
    finer = effective_bits(PoolAE(), shapes, tolerance_db=0.01)
    assert finer.step < result.step and finer.bits_per_image > result.bits_per_image
    out = evaluate_reconstruction(PoolAE(), shapes, batch_size=7, lpips=False, progress=False)  # hands its tokens over
    alone = effective_bits(PoolAE(), shapes, batch_size=7)
    assert out["effective_bits_per_image"] == alone.bits_per_image and out["quantization_step"] == alone.step


class CraftedTokenizer(nn.Module):
    """Image i (constant value) -> 2 token positions x 2 levels with chosen ids; token 1 is padding.

    Level 0 of token 0 is the image's value index (0..3), level 1 always 0; the padded token holds
    id 3 everywhere, which must not be counted.
    """

    values = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])
    spec = TokenSpec("discrete", max_tokens=2, vocab_size=4, levels=2)

    def encode(self, images):
        index = (images[:, 0, 0, 0, None] - self.values).abs().argmin(1)
        ids = torch.full((len(images), 2, 2), 3, dtype=torch.long)
        ids[:, 0, 0], ids[:, 0, 1] = index, 0
        mask = torch.tensor([True, False]).expand(len(images), 2)
        return Tokens(ids=ids, mask=mask)

    def decode(self, tokens):
        return self.values[tokens.ids[:, 0, 0]].view(-1, 1, 1, 1).expand(-1, 3, 8, 8)


def test_codebook_usage_and_perplexity_over_the_whole_set_per_level():
    images = CraftedTokenizer.values.repeat(2).view(-1, 1, 1, 1).expand(-1, 3, 8, 8).clone()
    # Batches of 2 each see only 2 codes; the whole set uses all 4 at level 0, 1 at level 1.
    out = evaluate_reconstruction(CraftedTokenizer(), images, batch_size=2, lpips=False, progress=False)
    assert out["codebook_usage"] == pytest.approx((4 / 4 + 1 / 4) / 2)
    assert out["perplexity"] == pytest.approx((4 + 1) / 2)
    assert out["tokens_per_image"] == 1  # valid tokens only
    assert out["bits_per_image"] == pytest.approx(1 * 2 * 2)
    assert out["psnr"] == math.inf


def test_lpips_is_averaged_over_images_when_available(shapes, monkeypatch):
    from trilemma.metrics import reconstruction

    class MeanAbs(nn.Module):  # stands in for LPIPS: one distance per image, shape [B, 1, 1, 1]
        def forward(self, x, y):
            return (x - y).abs().mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setattr(reconstruction, "load_lpips", lambda net="vgg": MeanAbs())
    tok = registry.build("tokenizer", "patch4-4bit")
    out = evaluate_reconstruction(tok, shapes, batch_size=20, progress=False)
    expected = (tok.reconstruct(shapes) - shapes).abs().mean().item()
    assert out["lpips"] == pytest.approx(expected, rel=1e-5) and out["lpips"] > 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        evaluate_reconstruction(registry.build("tokenizer", "patch4-8bit"), torch.zeros(3, 32, 32), progress=False)


def test_effective_bits_choose_the_step_on_a_subset_and_count_every_image(shapes):
    images = shapes[:12]
    whole = effective_bits(PoolAE(), images, batch_size=5)
    first = effective_bits(PoolAE(), images[:4], batch_size=5)
    subset = effective_bits(PoolAE(), images, batch_size=5, step_images=4)  # the sweep on 4 images
    assert subset.step == first.step and subset.step_images == 4 and whole.step_images == 12
    assert subset.psnr == pytest.approx(whole.psnr)  # reported on all 12
    assert subset.psnr_quantized == pytest.approx(quantized_psnr(PoolAE(), images, subset.step))
    valid = rearrange(F.avg_pool2d(images, 4), "b c h w -> (b h w) c").double()
    assert subset.bits_per_image == pytest.approx(64 * entropy_bits(quantize(valid, subset.step)))
    out = evaluate_reconstruction(PoolAE(), images, batch_size=5, lpips=False, progress=False, bits_step_images=4)
    assert out["quantization_step"] == subset.step and out["effective_bits_per_image"] == subset.bits_per_image
    with pytest.raises(ValueError, match="step_images"):
        effective_bits(PoolAE(), images, step_images=0)


def test_lpips_is_loaded_once_and_a_missing_backbone_said_once(shapes, monkeypatch, capsys):
    from trilemma.metrics import reconstruction

    calls = []

    def missing(net="vgg"):
        calls.append(net)
        raise FileNotFoundError("LPIPS needs the torchvision vgg ImageNet weights file (stand-in)")

    monkeypatch.setattr(reconstruction, "load_lpips", missing)
    tok = registry.build("tokenizer", "patch4-4bit")
    for _ in range(3):  # a tradeoff evaluates once per tokenizer and budget
        assert evaluate_reconstruction(tok, shapes[:4], progress=False)["lpips"] is None
    assert len(calls) == 1 and capsys.readouterr().out.count("lpips: skipped") == 1
