"""Pretrained diffusers ``VQModel`` weights as a trilemma tokenizer (local files only, never the hub).

The main use is aMUSEd's VQ-GAN (Patil et al. 2024, https://arxiv.org/abs/2401.01808; a VQGAN after
Esser et al. 2021, converted from open-muse): 8192 codes, 16x downsampling, so a 256x256 image is
16x16 tokens. Any diffusers ``VQModel`` works (VQ-Diffusion's, Kandinsky's MoVQ).

The diffusers model is wrapped whole, as the submodule ``vq``, so our ``model.safetensors`` holds its
own weights under ``vq.`` and ``config.json`` holds its config as plain JSON (``vq_config``), rebuilt
with ``VQModel.from_config`` on load. Tokens follow diffusers' own quantizer exactly:

- encode: ``encoder -> quant_conv -> quantize`` and the indices it returns. ``VQModel`` builds its
  ``VectorQuantizer`` with ``sane_index_shape=False`` and no remap, so indices come flat in
  (batch, row, column) order; ``legacy`` only changes which loss term beta weighs, never the indices.
  We call diffusers' ``quantize`` rather than re-deriving the argmin: it uses ``torch.cdist``, whose
  matmul path can break near-ties differently from an exact distance.
- decode: ``quantize.get_codebook_entry`` (the codebook has ``vq_embed_dim`` channels, channels-first
  after the lookup) then ``VQModel.decode(..., force_not_quantize=True)``. Models saved with
  ``lookup_from_codebook=True`` (aMUSEd) do the lookup inside ``decode`` and take the indices
  themselves plus a ``shape``; we pass ``(B, h, w, vq_embed_dim)`` (aMUSEd's pipeline passes
  ``latent_channels``, which is only the same number by coincidence of its config).

Pixel range: our images are in [-1, 1]. Most VQModels take that too, but aMUSEd's VQ-GAN takes
[0, 1] (its pipeline disables normalisation and clips the output to [0, 1]); ``pixel_range`` records
what the model expects and the tokenizer converts on the way in and out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange

from trilemma import registry
from trilemma.tokenizers.base import Tokenizer, TokenizerOutput
from trilemma.tokens import Prompt, Tokens, TokenSpec

if TYPE_CHECKING:  # diffusers takes seconds to import: only the functions that need it import it
    from diffusers import VQModel

CONFIG_NAME = "config.json"
PIPELINE_INDEX = "model_index.json"
WEIGHTS_STEM = "diffusion_pytorch_model"
WEIGHTS_NAMES = tuple(f"{WEIGHTS_STEM}.{ext}" for ext in ("safetensors", "safetensors.index.json", "bin", "bin.index.json"))
EXPECTED = f"{CONFIG_NAME} and {WEIGHTS_STEM}.safetensors (or .bin)"


def _vq_model_class() -> type:
    try:
        from diffusers import VQModel  # deferred: a 2-3 s import
    except ImportError as err:
        raise ImportError(f"the diffusers-vq tokenizer needs diffusers ({err}); pip install diffusers") from None
    return VQModel


@dataclass
class DiffusersVQConfig:
    image_size: int = 256  # square input resolution; a multiple of the model's downsampling factor
    vq_config: dict[str, Any] = field(default_factory=dict)  # diffusers VQModel config (its JSON), {} = defaults
    pixel_range: tuple[float, float] = (-1.0, 1.0)  # what the model takes: aMUSEd's VQ-GAN takes (0, 1)


@registry.register("tokenizer", "diffusers-vq")
class DiffusersVQ(Tokenizer):
    """A diffusers ``VQModel`` behind our Tokenizer interface; made by :func:`import_diffusers_vq`."""

    Config = DiffusersVQConfig

    def __init__(self, config: DiffusersVQConfig):
        super().__init__()
        self.config = config
        self.vq: VQModel = _vq_model_class().from_config(dict(config.vq_config)).float()
        vq = self.vq.config
        if vq.in_channels != 3 or vq.out_channels != 3:
            raise ValueError(f"trilemma tokenizers take RGB images; this VQModel has {vq.in_channels} input "
                             f"and {vq.out_channels} output channels")
        lo, hi = config.pixel_range
        if not lo < hi:
            raise ValueError(f"pixel_range must be (low, high) with low < high, got {tuple(config.pixel_range)}")
        factor = 2 ** (len(vq.block_out_channels) - 1)  # every down block but the last halves the size
        if config.image_size <= 0 or config.image_size % factor:
            raise ValueError(f"image_size {config.image_size} is not a positive multiple of this VQModel's "
                             f"downsampling factor {factor}")
        self.grid = (config.image_size // factor,) * 2

    @property
    def spec(self) -> TokenSpec:
        h, w = self.grid
        return TokenSpec("discrete", h * w, vocab_size=self.vocab_size, grid=self.grid, levels=1)

    @property
    def vocab_size(self) -> int:
        return int(self.vq.config.num_vq_embeddings)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight (where a GAN loss balances its gradient, as in vqvae.py)."""
        return self.vq.decoder.conv_out.weight

    # Pixel range: the identity (no arithmetic at all) for models that take [-1, 1] like we do.
    def _to_model(self, images: torch.Tensor) -> torch.Tensor:
        lo, hi = self.config.pixel_range
        return images if (lo, hi) == (-1, 1) else (images + 1) / 2 * (hi - lo) + lo

    def _from_model(self, out: torch.Tensor) -> torch.Tensor:
        lo, hi = self.config.pixel_range
        return out if (lo, hi) == (-1, 1) else (out - lo) / (hi - lo) * 2 - 1

    def _ids(self, images: torch.Tensor) -> torch.Tensor:
        """Codebook indices [B, h*w] from diffusers' own encode + quantize path."""
        self.check_images(images)
        latents = self.vq.encode(self._to_model(images)).latents  # encoder -> quant_conv
        _, _, (_, _, indices) = self.vq.quantize(latents)
        return indices.reshape(images.shape[0], -1)  # flat (b h w) raster order, as sane_index_shape=False gives

    def _decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        if ids.dim() == 3 and ids.shape[-1] == 1:
            ids = ids[..., 0]
        if ids.dim() != 2 or ids.shape[1] != h * w or ids.dtype.is_floating_point:
            raise ValueError(
                f"these tokens do not fit this tokenizer (it makes integer ids of shape [B, {h * w}], got "
                f"{ids.dtype} {list(ids.shape)}): decode tokens with the tokenizer that encoded them"
            )
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"these tokens do not fit this tokenizer: ids must be in [0, {self.vocab_size}), "
                             f"got [{int(ids.min())}, {int(ids.max())}]")
        ids = ids.long().to(self.vq.quantize.embedding.weight.device)
        shape = (ids.shape[0], h, w, self.vq.quantize.vq_embed_dim)  # channels-last, as get_codebook_entry wants
        flat = rearrange(ids, "b n -> (b n)")
        if self.vq.config.lookup_from_codebook:  # decode looks the ids up itself
            out = self.vq.decode(flat, force_not_quantize=True, shape=shape).sample
        else:
            codes = self.vq.quantize.get_codebook_entry(flat, shape)  # [B, vq_embed_dim, h, w]
            out = self.vq.decode(codes, force_not_quantize=True).sample
        return self._from_model(out)

    def forward(self, images: torch.Tensor, prompt: Prompt | None = None) -> TokenizerOutput:
        # Recon decodes the exact codebook vectors (not diffusers' straight-through z + (e - z)), so it
        # equals decode(encode(images)). No VQ losses: an imported tokenizer is used as it was trained.
        ids = self._ids(images)
        usage = torch.bincount(ids.flatten(), minlength=self.vocab_size)
        return TokenizerOutput(self._decode_ids(ids), Tokens(ids=ids), {}, usage)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, prompt: Prompt | None = None) -> Tokens:
        self.check_images(images, prompt)
        return Tokens(ids=self._ids(images))

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        if tokens.ids is None:
            raise ValueError("these tokens do not fit this tokenizer (it makes discrete ids, got latents only): "
                             "decode tokens with the tokenizer that encoded them")
        return self._decode_ids(tokens.ids)


# --- importing a local diffusers directory -----------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: corrupt JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _find_model_dir(path: Path) -> tuple[Path, str | None]:
    """(directory holding the VQModel, the pipeline class if ``path`` is a whole pipeline)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such directory; expected a diffusers VQModel directory ({EXPECTED}) "
                                f"or a pipeline directory with a vqvae/ subfolder")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: is a file; expected a diffusers VQModel directory ({EXPECTED})")
    if (path / CONFIG_NAME).is_file() or not (path / PIPELINE_INDEX).is_file():
        return path, None
    index = _read_json(path / PIPELINE_INDEX)
    pipeline = str(index.get("_class_name", "pipeline"))
    components = {k: v for k, v in index.items() if not k.startswith("_")}
    vq_parts = sorted(k for k, v in components.items() if isinstance(v, list) and v[-1:] == ["VQModel"])
    if not vq_parts:
        raise ValueError(f"{path}: a {pipeline} directory without a VQModel component "
                         f"(components: {', '.join(sorted(components)) or 'none'})")
    part = "vqvae" if "vqvae" in vq_parts else vq_parts[0]
    if not (path / part).is_dir():
        raise FileNotFoundError(f"{path / part}: missing; {path / PIPELINE_INDEX} lists a VQModel there ({EXPECTED})")
    return path / part, pipeline


def _check_vq_config(model_dir: Path) -> dict[str, Any]:
    config_path = model_dir / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; a diffusers VQModel directory holds {EXPECTED}")
    config = _read_json(config_path)
    if {"kind", "name", "format_version"} <= set(config):
        raise ValueError(f"{model_dir}: is already a trilemma checkpoint ({config['kind']} {config['name']!r}); "
                         "use it directly instead of importing it")
    cls = config.get("_class_name")
    if cls != "VQModel" and not (cls is None and "num_vq_embeddings" in config):
        hint = " (a continuous VAE: it has no codebook to make discrete tokens)" if cls in ("AutoencoderKL", "AutoencoderTiny") else ""
        raise ValueError(f"{config_path}: holds a {cls or 'non-diffusers'} config, not a diffusers VQModel{hint}")
    return config


def _weights_variant(model_dir: Path) -> str | None:
    """None for the plain weights file; else the variant (``fp16`` ...) the directory only has."""
    if any((model_dir / name).is_file() for name in WEIGHTS_NAMES):
        return None
    variants = sorted({p.name.split(".")[1].split("-")[0]  # fp16, or fp16-00001-of-00002 when sharded
                       for ext in ("safetensors", "bin") for p in model_dir.glob(f"{WEIGHTS_STEM}.*.{ext}")
                       if p.name.count(".") == 2})
    if not variants:
        raise FileNotFoundError(f"{model_dir}: no weights file; expected {WEIGHTS_STEM}.safetensors (or .bin, "
                                f"or a variant such as {WEIGHTS_STEM}.fp16.safetensors) beside {CONFIG_NAME}")
    return "fp32" if "fp32" in variants else variants[0]  # loaded into float32 either way


def _plain_config(config: Any) -> dict[str, Any]:
    """A diffusers FrozenDict as JSON, without its metadata keys (``_class_name``, ``_name_or_path``...)."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


def import_diffusers_vq(
    path: str | Path, image_size: int = 256, pixel_range: tuple[float, float] | None = None
) -> DiffusersVQ:
    """A trilemma tokenizer from a local diffusers ``VQModel`` directory; nothing is downloaded.

    ``path`` is either the model directory (``config.json`` + ``diffusion_pytorch_model.safetensors``,
    ``.bin``, sharded, or a single variant such as ``.fp16.safetensors``; weights load as float32) or
    a whole pipeline directory (``model_index.json``) with a VQModel component, e.g. aMUSEd's
    ``amused-256/`` whose ``vqvae/`` subfolder is used.

    ``pixel_range``: the range the model takes; None guesses (0, 1) for aMUSEd (an ``Amused*``
    pipeline, or a config with ``lookup_from_codebook``, a flag diffusers added for aMUSEd's VQ-GAN)
    and (-1, 1) otherwise.
    """
    model_dir, pipeline = _find_model_dir(Path(path))
    _check_vq_config(model_dir)
    variant = _weights_variant(model_dir)
    vq_class = _vq_model_class()
    try:
        # A local directory never reaches the hub; local_files_only makes sure of it.
        loaded = vq_class.from_pretrained(model_dir, local_files_only=True, variant=variant)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise ValueError(f"{model_dir}: diffusers could not load it as a VQModel: {err}") from err
    vq_config = _plain_config(loaded.config)
    if pixel_range is None:
        amused = (pipeline or "").startswith("Amused") or bool(vq_config.get("lookup_from_codebook"))
        pixel_range = (0.0, 1.0) if amused else (-1.0, 1.0)
    config = DiffusersVQConfig(image_size=image_size, vq_config=vq_config,
                               pixel_range=(float(pixel_range[0]), float(pixel_range[1])))
    tokenizer = DiffusersVQ(config)
    # Strict load into the model rebuilt from our config: proves config.json alone rebuilds it.
    tokenizer.vq.load_state_dict(loaded.state_dict())
    return tokenizer.eval()
