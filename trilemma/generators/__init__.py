"""Generators: text -> image tokens. Importing this package registers every generator."""

from trilemma.generators import autoregressive, diffusion, encoder_decoder, mar, masked, var  # noqa: F401  (registration side effects)
from trilemma.generators.base import Generator

__all__ = ["Generator"]
