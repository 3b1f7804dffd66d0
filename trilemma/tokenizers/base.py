"""The tokenizer interface every tokenizer implements, and its one output type.

    tok.spec -> TokenSpec
    tok.encode(images, prompt=None) -> Tokens          images: float [B, 3, H, W] in [-1, 1]
    tok.decode(tokens) -> images
    tok(images, prompt=None) -> TokenizerOutput(recon, tokens, losses, usage)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from trilemma.tokens import Prompt, Tokens, TokenSpec


@dataclass
class TokenizerOutput:
    recon: torch.Tensor  # [B, 3, H, W] reconstruction in [-1, 1] (unclamped during training)
    tokens: Tokens
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # weighted scalar terms, summed to train
    usage: torch.Tensor | None = None  # code counts in this batch [vocab_size] (discrete only)


class Tokenizer(nn.Module):
    """Base class: subclasses set ``self.config`` and implement spec/encode/decode/forward."""

    config: object
    trainable: bool = True  # False for tokenizers with nothing to learn (the raw patch tokenizer)
    any_size: bool = False  # True when the weights fit every image size (a convolutional grid): checkpoint.load(image_size=)

    @property
    def spec(self) -> TokenSpec:
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    promptable: bool = False  # takes Prompt(budget, boxes, points) (tokenizers/promptable.py)

    def check_images(self, images: torch.Tensor, prompt: Prompt | None = None) -> None:
        """Raise a clear error for input the tokenizer cannot take (images, or a prompt it ignores)."""
        if prompt is not None and not self.promptable and any(v is not None for v in prompt._fields().values()):
            raise ValueError(
                f"the {getattr(self, 'registry_name', type(self).__name__)} tokenizer takes no prompt (budget, boxes, "
                "points); use a promptable tokenizer (e.g. promptable-shapes)"
            )
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {list(images.shape)}")
        size = self.image_size
        if tuple(images.shape[-2:]) != (size, size):
            raise ValueError(
                f"this tokenizer takes {size}x{size} images, got {images.shape[-2]}x{images.shape[-1]}; "
                f"resize them (the CLI does this for you) or train a tokenizer at that size"
            )

    def encode(self, images: torch.Tensor, prompt: Prompt | None = None) -> Tokens:
        raise NotImplementedError

    def decode(self, tokens: Tokens) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, prompt: Prompt | None = None) -> TokenizerOutput:
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, prompt: Prompt | None = None) -> torch.Tensor:
        return self.decode(self.encode(images, prompt)).clamp(-1, 1)
