"""evaluate_reconstruction: exact and lossy patch tokenizers, crafted code histograms, the keys."""

import math

import pytest
import torch
from torch import nn

from trilemma import registry
from trilemma.data import load_dataset
from trilemma.metrics.features import DomainFeatures
from trilemma.metrics.reconstruction import KEYS, evaluate_reconstruction
from trilemma.tokens import Tokens, TokenSpec


@pytest.fixture(scope="module")
def shapes():
    data = load_dataset("shapes", "test", length=48)
    return torch.stack([data[i]["image"] for i in range(48)])


@pytest.fixture(scope="module")
def features():
    torch.manual_seed(0)
    return DomainFeatures(DomainFeatures.Config(channels=(8, 16), dim=32))


def test_lossless_patch_tokenizer_is_exact(shapes, features, capsys):
    tok = registry.build("tokenizer", "patch4-8bit")
    out = evaluate_reconstruction(tok, shapes, features=features, batch_size=20, progress=False)
    assert tuple(out) == KEYS
    assert out["psnr"] == math.inf and out["ssim"] == pytest.approx(1.0)
    assert abs(out["rfid"]) < 1e-3
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


def test_lossy_patch_tokenizer_has_known_bits_and_finite_error(shapes, features):
    exact = evaluate_reconstruction(registry.build("tokenizer", "patch4-8bit"), shapes, features, lpips=False, progress=False)
    lossy = evaluate_reconstruction(registry.build("tokenizer", "patch4-4bit"), shapes, features, lpips=False, progress=False)
    assert lossy["bits_per_image"] == 64 * 48 * 4 == exact["bits_per_image"] / 2
    assert 20 < lossy["psnr"] < math.inf and lossy["ssim"] < 1
    assert lossy["rfid"] > exact["rfid"]
    assert lossy["lpips"] is None  # lpips=False: not computed, no message needed


def test_continuous_tokenizer_counts_floats_not_bits(shapes):
    out = evaluate_reconstruction(registry.build("tokenizer", "patch4-float"), shapes, lpips=False, progress=False)
    assert out["discrete"] is False and out["floats_per_image"] == 64 * 48
    assert out["bits_per_image"] is None and out["codebook_usage"] is None and out["perplexity"] is None
    assert out["rfid"] is None and out["psnr"] == math.inf


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
