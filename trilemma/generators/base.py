"""What every generator shares: its construction from a ``TokenSpec`` and a text tokenizer, the
checkpoint context that records both, and the compatibility check against a tokenizer.

    gen = build("generator", name, spec=tok.spec, text=text_tokenizer, **cfg)
    gen.loss(tokens, text_ids) -> dict[str, Tensor]     ("loss" is what is optimised)
    gen.sample(text_ids, **sampling) -> Tokens
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trilemma.data.text import TextTokenizer
from trilemma.generators.sampling import SamplingConfig
from trilemma.tokens import Tokens, TokenSpec


class Generator(nn.Module):
    config: Any
    accepts = ("discrete",)  # TokenSpec kinds this generator can model

    def __init__(self, spec: TokenSpec, text: TextTokenizer):
        super().__init__()
        if spec.kind not in self.accepts:
            raise ValueError(
                f"{self.registry_name} models {' or '.join(self.accepts)} tokens, but this tokenizer makes "
                f"{spec.kind} tokens; pick a {' or '.join(self.accepts)} tokenizer (e.g. "
                + ("vq-f4-shapes)" if "discrete" in self.accepts else "ae-f4-shapes)")
            )
        self.spec, self.text = spec, text

    def checkpoint_context(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "text": self.text.to_dict()}

    @classmethod
    def context_from_checkpoint(cls, context: dict[str, Any], directory: Path) -> dict[str, Any]:
        return {"spec": TokenSpec.from_dict(context["spec"]), "text": TextTokenizer.from_dict(context["text"])}

    def null_text(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The empty prompt: the unconditional input used by classifier-free guidance."""
        return self.text.encode([""] * batch).to(device)

    def flat_ids(self, tokens: Tokens) -> torch.Tensor:
        """[B, N] or [B, N, levels] ids -> [B, N * levels], position-major."""
        ids = tokens.ids
        if ids is None:
            raise ValueError(f"{self.registry_name} needs token ids; these tokens carry only latents")
        return ids.reshape(ids.shape[0], -1)

    def unflatten(self, flat: torch.Tensor) -> Tokens:
        if self.spec.levels > 1:
            flat = flat.reshape(flat.shape[0], -1, self.spec.levels)
        return Tokens(ids=flat)

    def loss(self, tokens: Tokens, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return self(self.flat_ids(tokens), text_ids)

    def sample(self, text_ids: torch.Tensor, **sampling: Any) -> Tokens:
        raise NotImplementedError

    @staticmethod
    def sampling_config(**sampling: Any) -> SamplingConfig:
        unknown = set(sampling) - set(SamplingConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown sampling options {sorted(unknown)}; known: {sorted(SamplingConfig.__dataclass_fields__)}")
        return SamplingConfig(**sampling)
