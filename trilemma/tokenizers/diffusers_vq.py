"""A pretrained diffusers ``VQModel`` as a trilemma tokenizer (made by ``interop.import_diffusers``).

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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange

from trilemma import registry
from trilemma.tokenizers.base import Tokenizer, TokenizerOutput
from trilemma.tokenizers.diffusers_files import (check_image_size, check_pixel_range, check_rgb, downsampling, from_config,
                                                  from_model, to_model)
from trilemma.tokens import Prompt, Tokens, TokenSpec

if TYPE_CHECKING:  # diffusers takes seconds to import: only the functions that need it import it
    from diffusers import VQModel


@dataclass
class DiffusersVQConfig:
    image_size: int = 256  # square input resolution; a multiple of the model's downsampling factor
    vq_config: dict[str, Any] = field(default_factory=dict)  # diffusers VQModel config (its JSON), {} = defaults
    pixel_range: tuple[float, float] = (-1.0, 1.0)  # what the model takes: aMUSEd's VQ-GAN takes (0, 1)


@registry.register("tokenizer", "diffusers-vq")
class DiffusersVQ(Tokenizer):
    """A diffusers ``VQModel`` behind our Tokenizer interface."""

    Config = DiffusersVQConfig
    any_size = True

    def __init__(self, config: DiffusersVQConfig):
        super().__init__()
        self.config = config
        self.vq: VQModel = from_config("VQModel", dict(config.vq_config))
        vq = self.vq.config
        check_rgb(self.vq, "VQModel")
        check_pixel_range(config.pixel_range)
        factor = downsampling(len(vq.block_out_channels))
        check_image_size(config.image_size, factor, "VQModel")
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

    def _to_model(self, images: torch.Tensor) -> torch.Tensor:
        return to_model(images, self.config.pixel_range)

    def _from_model(self, out: torch.Tensor) -> torch.Tensor:
        return from_model(out, self.config.pixel_range)

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
