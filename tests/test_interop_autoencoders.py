"""Importing diffusers' continuous autoencoders: each supported class, built tiny and random with
diffusers' own class and saved with ``save_pretrained``, gives the latents and pixels of diffusers
itself through the scaling its pipelines apply; checkpoints round-trip; a generator trains on it."""

import json
import socket

import pytest
import torch
from einops import rearrange

from trilemma import checkpoint
from trilemma.cli import main
from trilemma.tokenizers.diffusers_ae import DiffusersAE
from trilemma.tokenizers.interop import import_diffusers
from trilemma.tokens import Tokens

diffusers = pytest.importorskip("diffusers")

KL_BLOCKS = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                 block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)


def consistency_decoder(**kw):
    return diffusers.ConsistencyDecoderVAE(
        encoder_block_out_channels=(8, 16), encoder_down_block_types=("DownEncoderBlock2D",) * 2,
        encoder_layers_per_block=1, encoder_norm_num_groups=4, decoder_block_out_channels=(8, 16),
        decoder_down_block_types=("ResnetDownsampleBlock2D",) * 2, decoder_up_block_types=("ResnetUpsampleBlock2D",) * 2,
        decoder_layers_per_block=1, decoder_norm_num_groups=4, **kw)


def build(kind: str):
    """A tiny random model of ``kind`` (factor 2 on 32x32 images: a 16x16 latent grid)."""
    torch.manual_seed(0)
    if kind == "sd":  # SD 1.x / 2.x / SDXL: scaling only
        return diffusers.AutoencoderKL(latent_channels=4, scaling_factor=0.18215, **KL_BLOCKS)
    if kind == "flux1":  # SD3 / FLUX.1: 16 channels, a shift and a scale
        return diffusers.AutoencoderKL(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, **KL_BLOCKS)
    if kind == "stats":  # per-channel latents_mean / latents_std in the config (as Playground v2.5's)
        return diffusers.AutoencoderKL(latent_channels=4, scaling_factor=0.5, latents_mean=[0.1, -0.2, 0.3, 0.0],
                                       latents_std=[0.9, 1.1, 0.7, 1.3], **KL_BLOCKS)
    if kind == "flux2":
        model = diffusers.AutoencoderKLFlux2(latent_channels=4, **KL_BLOCKS)
        model.bn.running_mean.copy_(torch.randn(16) * 0.1)  # as trained: not the identity
        model.bn.running_var.copy_(torch.rand(16) + 0.5)
        return model
    if kind == "dc":
        return diffusers.AutoencoderDC(
            latent_channels=4, attention_head_dim=4, encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16),
            encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), encoder_qkv_multiscales=((), ()),
            decoder_qkv_multiscales=((), ()), scaling_factor=0.41407)
    if kind == "tiny":
        return diffusers.AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                                         num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4,
                                         scaling_factor=1.5, shift_factor=0.1)
    if kind == "consistency":
        return consistency_decoder()
    raise ValueError(kind)


def pipeline_encode(kind: str, model, x: torch.Tensor) -> torch.Tensor:
    """The latents each model's diffusers pipeline hands its denoiser, written out as they write it."""
    c = model.config
    if kind == "dc":
        return model.encode(x).latent * c.scaling_factor
    if kind == "tiny":
        return (model.encode(x).latents - c.shift_factor) * c.scaling_factor
    z = model.encode(x).latent_dist.mean
    if kind == "flux2":
        b, ch, h, w = z.shape  # Flux2Pipeline._patchify_latents, then its batch-norm statistics
        z = z.view(b, ch, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, ch * 4, h // 2, w // 2)
        mean = model.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(model.bn.running_var.view(1, -1, 1, 1) + c.batch_norm_eps)
        return (z - mean) / std
    if kind == "stats":
        mean, std = torch.tensor(c.latents_mean).view(1, -1, 1, 1), torch.tensor(c.latents_std).view(1, -1, 1, 1)
        return (z - mean) * c.scaling_factor / std
    return (z - (c.get("shift_factor") or 0.0)) * c.scaling_factor


def pipeline_decode(kind: str, model, z: torch.Tensor) -> torch.Tensor:
    c = model.config
    if kind == "dc":
        return model.decode(z / c.scaling_factor).sample
    if kind == "tiny":
        return model.decode(z / c.scaling_factor + c.shift_factor).sample
    if kind == "consistency":
        return model.decode(z / c.scaling_factor, generator=torch.Generator().manual_seed(0), num_inference_steps=2).sample
    if kind == "flux2":
        std = torch.sqrt(model.bn.running_var.view(1, -1, 1, 1) + c.batch_norm_eps)
        z = z * std + model.bn.running_mean.view(1, -1, 1, 1)
        b, ch, h, w = z.shape  # Flux2Pipeline._unpatchify_latents
        z = z.reshape(b, ch // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, ch // 4, h * 2, w * 2)
        return model.decode(z).sample
    if kind == "stats":
        mean, std = torch.tensor(c.latents_mean).view(1, -1, 1, 1), torch.tensor(c.latents_std).view(1, -1, 1, 1)
        return model.decode(z * std / c.scaling_factor + mean).sample
    return model.decode(z / c.scaling_factor + (c.get("shift_factor") or 0.0)).sample


KINDS = ["sd", "flux1", "stats", "flux2", "dc", "tiny", "consistency"]
CHANNELS = {"flux1": 16, "flux2": 16}  # latent_dim: Flux2 folds 2x2 patches of 4 channels


@pytest.mark.parametrize("kind", KINDS)
def test_every_class_gives_its_pipelines_latents_and_pixels(kind, tmp_path, images):
    model = build(kind).eval()
    model.save_pretrained(tmp_path / kind)
    tok = import_diffusers(tmp_path / kind, image_size=32)
    assert isinstance(tok, DiffusersAE) and tok.config.class_name == type(model).__name__
    grid = 8 if kind == "flux2" else 16
    assert tok.spec.kind == "continuous" and tok.spec.grid == (grid, grid)
    assert tok.spec.latent_dim == CHANNELS.get(kind, 4)
    with torch.no_grad():
        theirs = pipeline_encode(kind, model, images)
        tokens = tok.encode(images)
        assert tokens.latents.shape == (4, grid * grid, tok.spec.latent_dim)
        torch.testing.assert_close(rearrange(tokens.latents, "b (h w) c -> b c h w", h=grid), theirs, rtol=0, atol=1e-5)
        assert theirs.std() > 1e-3  # the comparison is not vacuous
        torch.testing.assert_close(tok.decode(tokens), pipeline_decode(kind, model, theirs), rtol=0, atol=1e-5)
        again = checkpoint.load(checkpoint.save(tok, tmp_path / "ours"), kind="tokenizer")
        assert all(torch.equal(v, again.state_dict()[k]) for k, v in tok.state_dict().items())
        assert torch.equal(again.decode(again.encode(images)), tok.decode(tokens))


def test_cli_imports_a_pipeline_directory_without_the_network(tmp_path, images, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("network access during import")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = build("flux1").half()
    model.save_pretrained(tmp_path / "pipe" / "vae", variant="fp16")  # only the fp16 variant on disk
    index = {"_class_name": "FluxPipeline", "vae": ["diffusers", "AutoencoderKL"], "transformer": ["diffusers", "FluxTransformer2DModel"]}
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(index))
    out = tmp_path / "flux-vae"
    assert main(["import", "diffusers", str(tmp_path / "pipe"), "--image-size", "32", "--out", str(out)]) == 0
    assert "16x16 tokens, 16 channels (4096 floats per image)" in capsys.readouterr().out
    tok = checkpoint.load(out, kind="tokenizer")
    assert json.loads((out / "config.json").read_text())["imported_from"] == str(tmp_path / "pipe")
    theirs = pipeline_encode("flux1", model.float(), images)  # the fp16 weights, loaded into float32
    torch.testing.assert_close(rearrange(tok.encode(images).latents, "b (h w) c -> b c h w", h=16), theirs, rtol=0, atol=1e-5)


def test_sample_draws_from_the_posterior_and_a_consistency_decoder_replaces_the_vae_decoder(tmp_path, images):
    vae, cd = build("sd"), consistency_decoder()
    vae.save_pretrained(tmp_path / "vae")
    cd.save_pretrained(tmp_path / "cd")
    mean = import_diffusers(tmp_path / "vae", image_size=32)
    drawn = import_diffusers(tmp_path / "vae", image_size=32, sample=True)
    torch.manual_seed(1)
    a = drawn.encode(images).latents
    torch.manual_seed(1)
    assert torch.equal(a, drawn.encode(images).latents) and not torch.allclose(a, mean.encode(images).latents)
    paired = import_diffusers(tmp_path / "vae", image_size=32, decoder=tmp_path / "cd")
    tokens = paired.encode(images)
    assert torch.equal(tokens.latents, mean.encode(images).latents)  # the VAE's encoder
    with torch.no_grad():
        z = rearrange(tokens.latents, "b (h w) c -> b c h w", h=16)
        theirs = pipeline_decode("consistency", cd, z)
    torch.testing.assert_close(paired.decode(tokens), theirs, rtol=0, atol=1e-5)
    assert torch.equal(paired.decode(tokens), paired.decode(tokens))  # its noise comes from decode_seed
    again = checkpoint.load(checkpoint.save(paired, tmp_path / "paired"), kind="tokenizer")
    assert torch.equal(again.decode(tokens), paired.decode(tokens))


def test_errors_name_the_class_and_the_fix(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "in_channels": 3}))
    with pytest.raises(ValueError, match="holds a UNet2DModel config; trilemma imports VQModel, AutoencoderKL, "
                                         "AutoencoderKLFlux2, AutoencoderDC, AutoencoderTiny, ConsistencyDecoderVAE"):
        import_diffusers(tmp_path / "unet")
    build("dc").save_pretrained(tmp_path / "dc")
    with pytest.raises(ValueError, match="`sample`: AutoencoderDC encodes to one latent"):
        import_diffusers(tmp_path / "dc", image_size=32, sample=True)
    with pytest.raises(ValueError, match="`decoder` .*holds AutoencoderDC; .* is a ConsistencyDecoderVAE"):
        build("sd").save_pretrained(tmp_path / "sd")
        import_diffusers(tmp_path / "sd", image_size=32, decoder=tmp_path / "dc")
    with pytest.raises(ValueError, match="not a positive multiple of this AutoencoderKLFlux2's downsampling factor 4"):
        build("flux2").save_pretrained(tmp_path / "f2")
        import_diffusers(tmp_path / "f2", image_size=34)
    tok = import_diffusers(tmp_path / "sd", image_size=32)
    with pytest.raises(ValueError, match="do not fit"):
        tok.decode(Tokens(ids=torch.zeros(1, 256, dtype=torch.long)))


def test_a_diffusion_generator_trains_samples_and_evaluates_on_an_imported_vae(tmp_path):
    torch.manual_seed(0)
    diffusers.AutoencoderKL(latent_channels=4, scaling_factor=0.5, shift_factor=0.2,
                            **{**KL_BLOCKS, "block_out_channels": (8, 8, 16), "down_block_types": ("DownEncoderBlock2D",) * 3,
                               "up_block_types": ("UpDecoderBlock2D",) * 3}).save_pretrained(tmp_path / "vae")
    vae = str(tmp_path / "imported")
    assert main(["import", "diffusers", str(tmp_path / "vae"), "--image-size", "32", "--out", vae]) == 0
    gen = str(tmp_path / "gen")
    assert main(["train", "generator", "--kind", "diffusion", "--preset", "diffusion-tiny", "--tokenizer", vae,
                 "--steps", "2", "--batch-size", "4", "--num-images", "8", "--out", gen]) == 0
    model = checkpoint.load(tmp_path / "gen" / "model", kind="generator")
    assert float(model.latent_scale) != 1.0  # the latents' statistics were measured, not assumed
    assert main(["generate", "a red circle", "--generator", gen, "--n", "2", "--sample-steps", "2",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert main(["eval", "reconstruction", "--tokenizer", vae, "--n", "16", "--features", "none",
                 "--out", str(tmp_path / "ev")]) == 0
