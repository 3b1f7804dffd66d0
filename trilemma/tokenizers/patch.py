"""Encoder-free patch tokenizer: raw p x p pixel patches are the tokens ("patches as visual units").

Discrete mode quantizes every channel value of a patch to ``bits`` bits, so a token is
``3 * p * p`` ids (``TokenSpec.levels``) from a vocabulary of ``2 ** bits``. At 8 bits this is exactly
lossless on 8-bit images: the lossless + discrete corner of the trilemma, paid for in compactness
(8 bits per sub-pixel). Continuous mode hands the patch vectors to the generator as latents.
Nothing is learned, so there is nothing to train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from trilemma import registry
from trilemma.tokenizers.base import Tokenizer, TokenizerOutput
from trilemma.tokens import Prompt, Tokens, TokenSpec


@dataclass
class PatchConfig:
    image_size: int = 32  # square input resolution
    patch: int = 4  # patch side p; a token covers p x p pixels
    bits: int | None = 8  # bits per channel value; None = continuous patch vectors


@registry.register("tokenizer", "patch")
class PatchTokenizer(Tokenizer):
    Config = PatchConfig
    any_size = True
    trainable = False

    def __init__(self, config: PatchConfig):
        super().__init__()
        if config.image_size % config.patch:
            raise ValueError(f"image_size {config.image_size} is not divisible by patch {config.patch}")
        if config.bits is not None and not 1 <= config.bits <= 16:
            raise ValueError(f"bits must be in 1..16 (or None for continuous), got {config.bits}")
        self.config = config
        self.grid = (config.image_size // config.patch,) * 2

    @property
    def max_value(self) -> int:
        return 2 ** self.config.bits - 1

    @property
    def spec(self) -> TokenSpec:
        n = self.grid[0] * self.grid[1]
        dim = 3 * self.config.patch**2
        if self.config.bits is None:
            return TokenSpec("continuous", n, latent_dim=dim, grid=self.grid)
        return TokenSpec("discrete", n, vocab_size=2**self.config.bits, grid=self.grid, levels=dim)

    def _patches(self, images: torch.Tensor) -> torch.Tensor:
        p = self.config.patch
        return rearrange(images.float(), "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)

    def _images(self, patches: torch.Tensor) -> torch.Tensor:
        p, (h, w) = self.config.patch, self.grid
        return rearrange(patches, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=h, w=w, p1=p, p2=p, c=3)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, prompt: Prompt | None = None) -> Tokens:
        self.check_images(images, prompt)
        patches = self._patches(images)
        if self.config.bits is None:
            return Tokens(latents=patches)
        # [-1, 1] -> {0 .. 2^bits - 1}; round-half-to-even matches how 8-bit images map back exactly.
        ids = torch.round((patches.clamp(-1, 1) + 1) * (self.max_value / 2)).long()
        return Tokens(ids=ids)

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        if self.config.bits is None:
            if tokens.latents is None:
                raise ValueError("this continuous patch tokenizer decodes latents; these tokens have only ids")
            return self._images(tokens.latents.float())
        if tokens.ids is None:
            raise ValueError("this discrete patch tokenizer decodes ids; these tokens have only latents")
        return self._images(tokens.ids.float() / (self.max_value / 2) - 1)  # as images.pil_to_tensor: 8-bit exact

    def forward(self, images: torch.Tensor, prompt: Prompt | None = None) -> TokenizerOutput:
        tokens = self.encode(images, prompt)
        usage = None
        if tokens.ids is not None:
            usage = torch.bincount(tokens.ids.flatten(), minlength=2**self.config.bits).float()
        return TokenizerOutput(self.decode(tokens), tokens, {}, usage)


for _p, _bits in ((4, 8), (4, 4), (8, 8), (2, 8)):
    registry.register_preset(
        "tokenizer", f"patch{_p}-{_bits}bit", "patch",
        f"raw {_p}x{_p} patches, {_bits} bits per channel" + (" (exactly lossless)" if _bits == 8 else ""),
        patch=_p, bits=_bits,
    )
registry.register_preset("tokenizer", "patch4-float", "patch", "raw 4x4 patches as continuous vectors", patch=4, bits=None)
registry.register_preset("tokenizer", "patch16-256", "patch", "256x256 images as 16x16 8-bit patches", image_size=256, patch=16, bits=8)
