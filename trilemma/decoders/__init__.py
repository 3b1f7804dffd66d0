"""Decoders: a second kind of model that turns a tokenizer's tokens into images, trained against
that tokenizer, usable wherever ``tokenizer.decode`` is. Importing this package registers them."""

from trilemma.decoders import token_diffusion  # noqa: F401  (registration side effects)
