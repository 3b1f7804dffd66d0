"""Importing a diffusers VQModel: same ids and pixels as diffusers itself, bit-exact checkpoints, clear errors."""

import json
import re
import socket

import pytest
import torch

from trilemma import checkpoint
from trilemma.cli import main
from trilemma.tokenizers.diffusers_vq import DiffusersVQ
from trilemma.tokenizers.interop import import_diffusers
from trilemma.tokens import Tokens

diffusers = pytest.importorskip("diffusers")


def tiny_vq_model(**overrides):
    """A 2-level VQModel (factor 2) whose codebook is drawn from its own latents, so ids vary."""
    torch.manual_seed(0)
    model = diffusers.VQModel(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, vq_embed_dim=3,
        num_vq_embeddings=32, norm_num_groups=4, sample_size=32, **overrides,
    ).eval()
    with torch.no_grad():  # diffusers' init (uniform +-1/n) would send every latent to a handful of codes
        latents = model.encode(torch.rand(2, 3, 32, 32) * 2 - 1).latents
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        model.quantize.embedding.weight.copy_(flat[torch.randperm(len(flat))[:32]])
    return model


def diffusers_ids(model, pixels):
    """diffusers' own tokens: encode (encoder + quant_conv) -> quantize -> indices."""
    with torch.no_grad():
        _, _, (_, _, indices) = model.quantize(model.encode(pixels).latents)
    return indices.reshape(len(pixels), -1)


def diffusers_decode(model, ids, grid):
    shape = (len(ids), *grid, model.config.vq_embed_dim)
    with torch.no_grad():
        if model.config.lookup_from_codebook:
            return model.decode(ids.flatten(), force_not_quantize=True, shape=shape).sample
        codes = model.quantize.get_codebook_entry(ids.flatten(), shape)
        return model.decode(codes, force_not_quantize=True).sample


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    src = tmp_path_factory.mktemp("diffusers") / "vq"
    model = tiny_vq_model()
    model.save_pretrained(src)
    return src, model


@pytest.fixture(scope="module")
def imported(source, tmp_path_factory):
    src, _ = source
    dst = tmp_path_factory.mktemp("trilemma") / "tok"
    assert main(["import", "diffusers-vq", str(src), "--image-size", "32", "--out", str(dst)]) == 0  # the old name, kept
    return dst


def test_cli_import_gives_diffusers_ids_and_pixels(source, imported, images):
    _, model = source
    tok = checkpoint.load(imported, kind="tokenizer")
    assert isinstance(tok, DiffusersVQ)
    assert tok.spec.grid == (16, 16) and tok.spec.vocab_size == 32 and tok.spec.levels == 1
    assert tok.config.pixel_range == (-1.0, 1.0)
    tokens = tok.encode(images)
    ids = diffusers_ids(model, images)
    assert tokens.ids.shape == (4, 256) and torch.equal(tokens.ids, ids)
    assert ids.unique().numel() >= 8  # the comparison is not vacuous
    recon = tok.decode(tokens)
    assert torch.equal(recon, diffusers_decode(model, ids, (16, 16)))
    out = tok(images)  # forward decodes the same codebook vectors
    assert torch.equal(out.recon, recon) and torch.equal(out.tokens.ids, ids) and out.losses == {}
    assert torch.equal(out.usage, torch.bincount(ids.flatten(), minlength=32))


def test_checkpoint_round_trip_is_bit_exact(source, imported, tmp_path):
    src, model = source
    tok = checkpoint.load(imported, kind="tokenizer")
    theirs = model.state_dict()
    ours = tok.state_dict()
    assert sorted(ours) == sorted(f"vq.{k}" for k in theirs)
    assert all(torch.equal(ours[f"vq.{k}"], v) for k, v in theirs.items())
    again = checkpoint.load(checkpoint.save(tok, tmp_path / "again"), kind="tokenizer")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ours.items())
    meta = json.loads((imported / "config.json").read_text())
    assert meta["name"] == "diffusers-vq" and meta["imported_from"] == str(src)
    assert meta["config"]["vq_config"]["num_vq_embeddings"] == 32  # plain JSON, no _name_or_path
    assert not any(k.startswith("_") for k in meta["config"]["vq_config"])


def test_amused_pipeline_layout_takes_zero_one_pixels(tmp_path, images):
    """aMUSEd: a pipeline directory, the VQ in vqvae/, lookup_from_codebook, pixels in [0, 1]."""
    model = tiny_vq_model(lookup_from_codebook=True)
    model.save_pretrained(tmp_path / "amused" / "vqvae")
    index = {"_class_name": "AmusedPipeline", "vqvae": ["diffusers", "VQModel"],
             "transformer": ["diffusers", "UVit2DModel"]}
    (tmp_path / "amused" / "model_index.json").write_text(json.dumps(index))
    tok = import_diffusers(tmp_path / "amused", image_size=32)
    assert tok.config.pixel_range == (0.0, 1.0)
    ids = diffusers_ids(model, (images + 1) / 2)
    tokens = tok.encode(images)
    assert torch.equal(tokens.ids, ids)
    expected = diffusers_decode(model, ids, (16, 16)) * 2 - 1
    assert torch.equal(tok.decode(tokens), expected)  # (0, 1) <-> (-1, 1) is exact arithmetic


def test_fp16_variant_only_directory_loads_as_float32(tmp_path):
    model = tiny_vq_model().half()
    model.save_pretrained(tmp_path / "vq16", variant="fp16")  # only diffusion_pytorch_model.fp16.safetensors
    tok = import_diffusers(tmp_path / "vq16", image_size=32)
    weight = tok.vq.quantize.embedding.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, model.quantize.embedding.weight.float())


def test_import_never_touches_the_network(source, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access during import")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import_diffusers(source[0], image_size=32)


def test_errors_name_the_path_and_the_problem(source, tmp_path, capsys):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}: no such directory") + ".*config.json"):
        import_diffusers(missing)
    assert main(["import", "diffusers", str(missing), "--out", str(tmp_path / "out")]) == 1
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json: missing.*diffusion_pytorch_model.safetensors"):
        import_diffusers(tmp_path / "empty")

    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text((source[0] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no_weights: no weights file; expected diffusion_pytorch_model"):
        import_diffusers(tmp_path / "no_weights")

    with pytest.raises(ValueError, match="`sample` and `decoder` are for continuous autoencoders"):
        import_diffusers(source[0], image_size=32, sample=True)

    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                                     "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(ValueError, match="StableDiffusionPipeline directory without an autoencoder trilemma imports"):
        import_diffusers(tmp_path / "pipe")

    with pytest.raises(ValueError, match="`image_size` 33 is not a positive multiple of this VQModel's downsampling factor 2"):
        import_diffusers(source[0], image_size=33)


def test_already_a_trilemma_checkpoint_is_refused(imported):
    with pytest.raises(ValueError, match="already a trilemma checkpoint"):
        import_diffusers(imported)


def test_decoding_foreign_tokens_is_refused(imported):
    tok = checkpoint.load(imported, kind="tokenizer")
    with pytest.raises(ValueError, match="do not fit"):
        tok.decode(Tokens(ids=torch.zeros(1, 64, dtype=torch.long)))  # wrong grid
    with pytest.raises(ValueError, match=r"ids must be in \[0, 32\)"):
        tok.decode(Tokens(ids=torch.full((1, 256), 32)))
    with pytest.raises(ValueError, match="do not fit"):
        tok.decode(Tokens(latents=torch.zeros(1, 256, 3)))
