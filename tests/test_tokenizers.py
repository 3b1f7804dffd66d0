"""Every registered tokenizer preset, built at tiny size: the interface holds and round-trips."""

import pytest
import torch

from trilemma import checkpoint, registry
from trilemma.tokens import Tokens

PRESETS = registry.preset_names("tokenizer")


def tiny(name):
    preset = registry.get_preset("tokenizer", name)
    if preset.model == "vqvae":
        q = dict(preset.config.quantizer)
        # Shrink the vocabulary too (LFQ at 2^18 would need GBs for its entropy term).
        if "codebook_size" in q:
            q["codebook_size"] = min(q["codebook_size"], 64)
        if q["name"] == "fsq":
            q["levels"] = [5, 3]
        return registry.build("tokenizer", name, channels=8, image_size=32, dim=min(preset.config.dim, 16),
                              num_res_blocks=1, quantizer=q)
    if preset.model == "msvq":  # a narrow body; the preset's scales that fit a 32x32 image's latent side
        side = 32 // preset.config.factor
        return registry.build("tokenizer", name, channels=8, image_size=32, codebook_size=64,
                              scales=tuple(s for s in preset.config.scales if s < side) + (side,))
    if preset.model == "promptable":  # the same layout (patch, tokens, quantizer), a narrow body
        return registry.build("tokenizer", name, image_size=32, dim=32, encoder_depth=1, decoder_depth=1, heads=2)
    return registry.build("tokenizer", name, image_size=32)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_interface(name, images, tmp_path):
    torch.manual_seed(0)
    tok = tiny(name)
    spec = tok.spec
    out = tok(images)
    assert out.recon.shape == images.shape
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    tok.eval()
    tokens = tok.encode(images)
    assert tokens.num_tokens == spec.max_tokens
    if spec.discrete:
        assert tokens.ids.min() >= 0 and tokens.ids.max() < spec.vocab_size
        assert (tokens.ids.shape[2] if tokens.ids.dim() == 3 else 1) == spec.levels
    else:
        assert tokens.latents.shape[-1] == spec.latent_dim
    recon = tok.decode(tokens)
    assert recon.shape == images.shape
    # tokens survive a file round trip and decode to the same pixels
    tokens.save(tmp_path / "t.safetensors", spec=spec)
    again = tok.decode(Tokens.load(tmp_path / "t.safetensors"))
    assert torch.allclose(again, recon, atol=1e-5)
    # the checkpoint reproduces the same tokens
    loaded = checkpoint.load(checkpoint.save(tok, tmp_path / "ckpt"))
    t2 = loaded.encode(images)
    assert torch.equal(t2.ids, tokens.ids) if spec.discrete else torch.allclose(t2.latents, tokens.latents, atol=1e-5)


def test_wrong_image_size_is_a_clear_error(tiny_vq):
    with pytest.raises(ValueError, match="takes 32x32 images, got 16x16"):
        tiny_vq.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_vq.encode(torch.zeros(3, 32, 32))


def test_decoding_foreign_tokens_is_refused(tiny_vq):
    with pytest.raises(ValueError, match="do not fit"):
        tiny_vq.decode(Tokens(latents=torch.zeros(1, 64, 4)))


def test_patch_8bit_is_exactly_lossless_on_8bit_images():
    tok = registry.build("tokenizer", "patch4-8bit")
    u8 = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    images = u8.float() / 127.5 - 1
    recon = tok.decode(tok.encode(images))
    assert torch.equal(torch.round((recon + 1) * 127.5).to(torch.uint8), u8)
    assert torch.equal(recon, images)  # the very floats an 8-bit image loads as: PSNR infinite, not ~150 dB
    assert tok.spec.bits_per_token * tok.spec.max_tokens == 32 * 32 * 3 * 8  # no compression at all


def test_patch_fewer_bits_is_lossy_but_bounded():
    tok = registry.build("tokenizer", "patch4-4bit")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    err = (tok.decode(tok.encode(images)) - images).abs().max()
    assert 0 < err <= 1 / 15 + 1e-6  # half a quantization step of 2/15


def test_gpu_presets_have_standard_shapes():
    f16 = registry.get_preset("tokenizer", "vq-f16-256").config
    f8 = registry.get_preset("tokenizer", "vq-f8-256").config
    assert (f16.image_size, f16.factor, f8.factor) == (256, 16, 8)


def test_nested_overrides_merge_or_replace_by_name():
    from trilemma import registry as reg

    merged = reg.build("tokenizer", "vq-f4-shapes", channels=8, quantizer={"codebook_size": 64})
    assert merged.config.quantizer == {"name": "vq", "codebook_size": 64, "codebook_dim": 8}  # merged key by key
    replaced = reg.build("tokenizer", "vq-f4-shapes", channels=8, quantizer={"name": "fsq", "levels": [5, 3]})
    assert replaced.config.quantizer == {"name": "fsq", "levels": [5, 3]} and replaced.spec.vocab_size == 15
