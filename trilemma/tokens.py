"""The shared vocabulary of the system: what a tokenizer produces and what a generator consumes.

Generators see only ``TokenSpec`` and ``Tokens``; they never import a tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from trilemma.files import check_writable_file, umask_mode


@dataclass(frozen=True)
class TokenSpec:
    """What a generator needs to know about a tokenizer's tokens."""

    kind: str  # "discrete" (ids from a finite vocabulary) or "continuous" (latent vectors)
    max_tokens: int  # tokens per image (the budget ceiling of ordered tokens)
    vocab_size: int | None = None  # discrete: ids are in [0, vocab_size)
    latent_dim: int | None = None  # continuous: size of each latent vector
    grid: tuple[int, int] | None = None  # (h, w) when tokens form a raster grid, else None
    levels: int = 1  # ids per position (residual depth, or channels of a patch token)
    # Ordered 1D tokens (a promptable tokenizer): any prefix of the max_tokens decodes, so a generator
    # may model only the first k (trained at a budget) and still decode through this tokenizer.
    ordered: bool = False
    # Multi-scale tokens (a next-scale tokenizer, msvq): the ids are s x s maps for each s here, coarse
    # to fine, concatenated (max_tokens = sum of s^2); any prefix of whole scales decodes.
    scales: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("discrete", "continuous"):
            raise ValueError(f"TokenSpec.kind must be 'discrete' or 'continuous', got {self.kind!r}")
        if self.kind == "discrete" and not self.vocab_size:
            raise ValueError("a discrete TokenSpec needs vocab_size")
        if self.kind == "continuous" and not self.latent_dim:
            raise ValueError("a continuous TokenSpec needs latent_dim")
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if self.scales is not None:
            object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
            if sum(s * s for s in self.scales) != self.max_tokens:
                raise ValueError(f"TokenSpec.scales {self.scales} hold {sum(s * s for s in self.scales)} tokens, "
                                 f"not max_tokens={self.max_tokens}")

    @property
    def discrete(self) -> bool:
        return self.kind == "discrete"

    @property
    def bits_per_token(self) -> float | None:
        """log2(vocab) x levels for discrete tokens; None for continuous latents (not a bit count)."""
        if not self.discrete:
            return None
        return self.levels * math.log2(self.vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TokenSpec":
        d = dict(d)
        if "sparse" in d:  # what `ordered` was called in specs saved before
            d["ordered"] = d.pop("sparse")
        for key in ("grid", "scales"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass
class Prompt:
    """What a promptable tokenizer is asked for. Every field is optional."""

    budget: int | None = None  # number of tokens to produce
    boxes: torch.Tensor | None = None  # [B, P, 4] normalised (x0, y0, x1, y1)
    points: torch.Tensor | None = None  # [B, P, 2] normalised (x, y)
    point_labels: torch.Tensor | None = None  # [B, P] 1 = foreground, 0 = background

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self._fields().items() if isinstance(v, torch.Tensor)}

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def index(self, idx: Any) -> "Prompt":
        kw = {k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in self._fields().items()}
        return Prompt(**kw)


_TENSOR_FIELDS = ("ids", "latents", "mask")


@dataclass
class Tokens:
    """A batch of image tokens. ``ids`` and/or ``latents``; the rest is optional.

    ids:       LongTensor [B, N] or [B, N, levels] (discrete tokenizers)
    latents:   FloatTensor [B, N, D] (continuous tokenizers, or the quantized vectors)
    mask:      BoolTensor [B, N] True where a token is valid (an image's budget of ordered tokens)
    prompt:    the Prompt the tokens were made for (a promptable tokenizer needs it to decode)
    """

    ids: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    prompt: Prompt | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able extras (e.g. image size)

    def __post_init__(self) -> None:
        if self.ids is None and self.latents is None:
            raise ValueError("Tokens needs ids or latents")
        b, n = self._bn()
        for name in _TENSOR_FIELDS:
            t = getattr(self, name)
            if t is not None and tuple(t.shape[:2]) != (b, n):
                raise ValueError(f"Tokens.{name} has shape {tuple(t.shape)}, expected [{b}, {n}, ...]")

    def _bn(self) -> tuple[int, int]:
        t = self.ids if self.ids is not None else self.latents
        if t.dim() < 2:
            raise ValueError(f"Tokens need a batch and a token axis, got shape {tuple(t.shape)}")
        return int(t.shape[0]), int(t.shape[1])

    @property
    def batch_size(self) -> int:
        return self._bn()[0]

    @property
    def num_tokens(self) -> int:
        return self._bn()[1]

    def __len__(self) -> int:
        return self.batch_size

    def tokens_per_image(self) -> torch.Tensor:
        """Valid tokens in each image, LongTensor [B]."""
        b, n = self._bn()
        if self.mask is None:
            return torch.full((b,), n, dtype=torch.long)
        return self.mask.sum(1).long()

    def __getitem__(self, idx: Any) -> "Tokens":
        """Index or slice along the batch axis."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        kw = {k: (getattr(self, k)[idx] if getattr(self, k) is not None else None) for k in _TENSOR_FIELDS}
        prompt = self.prompt.index(idx) if self.prompt is not None else None
        return Tokens(**kw, prompt=prompt, meta=dict(self.meta))

    def to(self, device: torch.device | str) -> "Tokens":
        kw = {k: (getattr(self, k).to(device) if getattr(self, k) is not None else None) for k in _TENSOR_FIELDS}
        prompt = self.prompt
        if prompt is not None:
            prompt = Prompt(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in prompt._fields().items()})
        return Tokens(**kw, prompt=prompt, meta=dict(self.meta))

    @staticmethod
    def cat(parts: Sequence["Tokens"]) -> "Tokens":
        """Concatenate along the batch axis; all parts must carry the same fields."""
        if not parts:
            raise ValueError("Tokens.cat needs at least one Tokens")
        kw: dict[str, Any] = {}
        for name in _TENSOR_FIELDS:
            present = [getattr(p, name) is not None for p in parts]
            if any(present) and not all(present):
                raise ValueError(f"Tokens.cat: {name} is set in some parts and not in others")
            kw[name] = torch.cat([getattr(p, name) for p in parts]) if all(present) else None
        prompt = None
        if parts[0].prompt is not None:
            first = parts[0].prompt
            fields = {}
            for k, v in first._fields().items():
                if isinstance(v, torch.Tensor):
                    fields[k] = torch.cat([p.prompt._fields()[k] for p in parts])
                else:
                    fields[k] = v
            prompt = Prompt(**fields)
        return Tokens(**kw, prompt=prompt, meta=dict(parts[0].meta))

    def save(self, path: str | Path, spec: TokenSpec | None = None) -> None:
        """Write to a .safetensors file (tensors + JSON metadata)."""
        tensors = {k: getattr(self, k).contiguous().cpu() for k in _TENSOR_FIELDS if getattr(self, k) is not None}
        meta = {"meta": json.dumps(self.meta)}
        if self.prompt is not None:
            for k, v in self.prompt.tensors().items():
                tensors[f"prompt.{k}"] = v.contiguous().cpu()
            meta["prompt.budget"] = json.dumps(self.prompt.budget)
        if spec is not None:
            meta["spec"] = json.dumps(spec.to_dict())
        check_writable_file(path, "tokens file")
        save_file(tensors, str(path), metadata=meta)
        os.chmod(path, umask_mode(0o666))  # safetensors writes 0600 whatever the umask

    @classmethod
    def load(cls, path: str | Path) -> "Tokens":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such tokens file")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as err:  # safetensors raises several types for corrupt files
            raise ValueError(f"{path}: not a readable tokens file ({err})") from None
        prompt = None
        if "prompt.budget" in meta:
            ptensors = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("prompt.")}
            prompt = Prompt(budget=json.loads(meta["prompt.budget"]), **ptensors)
        kw = {k: tensors.get(k) for k in _TENSOR_FIELDS}  # other tensors (older files' "positions") are ignored
        return cls(**kw, prompt=prompt, meta=json.loads(meta.get("meta", "{}")))

    @staticmethod
    def load_spec(path: str | Path) -> TokenSpec | None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such tokens file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            return TokenSpec.from_dict(json.loads(meta["spec"])) if "spec" in meta else None
        except Exception as err:  # safetensors / json / TokenSpec raise several types
            raise ValueError(f"{path}: not a readable tokens file ({str(err).splitlines()[0]})") from None
