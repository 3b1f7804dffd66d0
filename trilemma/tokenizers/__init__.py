"""Tokenizers: images -> tokens -> images. Importing this package registers every tokenizer."""

from trilemma.tokenizers import diffusers_ae, diffusers_vq, multiscale, patch, promptable, quantizers, vqvae  # noqa: F401  (registration side effects)
from trilemma.tokenizers.base import Tokenizer, TokenizerOutput

__all__ = ["Tokenizer", "TokenizerOutput"]
