"""Text -> tokens -> images: a tokenizer and a generator trained on its tokens, used together
(optionally decoding through a token-conditioned decoder instead of the tokenizer's own).

A generator or decoder checkpoint records the tokenizer it was trained on (path and weights hash);
loading a pipeline with any other tokenizer is refused with an error that says which one it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trilemma import checkpoint
from trilemma.decoders.token_diffusion import DecodedBy
from trilemma.generators.sampling import SamplingConfig


def check_compatible(tokenizer_spec: Any, generator_spec: Any) -> None:
    """The generator models this tokenizer's tokens: the same spec, or, on ordered 1D tokens (a
    promptable tokenizer), a prefix of them (a generator trained at a budget)."""
    fields = ("kind", "vocab_size", "latent_dim", "max_tokens", "levels", "grid", "ordered", "scales")
    diff = [f for f in fields if getattr(tokenizer_spec, f) != getattr(generator_spec, f)]
    if tokenizer_spec.ordered and generator_spec.max_tokens <= tokenizer_spec.max_tokens and "max_tokens" in diff:
        diff.remove("max_tokens")  # a prefix decodes
    if diff:
        detail = ", ".join(f"{f}: tokenizer {getattr(tokenizer_spec, f)} vs generator {getattr(generator_spec, f)}" for f in diff)
        raise ValueError(f"tokenizer and generator do not match ({detail}); use the tokenizer the generator was trained on")


def check_box(box: tuple[float, ...]) -> tuple[float, ...]:
    """A region to edit: x0,y0,x1,y1 in [0, 1] with x0 < x1 and y0 < y1."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"`box` must be x0,y0,x1,y1 in [0, 1] with x0 < x1 and y0 < y1, got {','.join(map(str, box))}")
    return box


def _box_cells(box: tuple[float, ...], h: int, w: int) -> torch.Tensor:
    """[h * w] bool, raster order: the cells of an h x w grid the box overlaps by more than an edge."""
    x0, y0, x1, y1 = box
    rows, cols = torch.arange(h), torch.arange(w)
    inside_r = ((rows + 1) / h > y0 + 1e-6) & (rows / h < y1 - 1e-6)
    inside_c = ((cols + 1) / w > x0 + 1e-6) & (cols / w < x1 - 1e-6)
    return (inside_r[:, None] & inside_c[None, :]).flatten()


def load_tokenizer(tokenizer_dir: str | Path, decoder_dir: str | Path | None = None, image_size: int | None = None) -> Any:
    """A tokenizer checkpoint; with ``decoder_dir``, decoding through that token-conditioned decoder
    (which must have been trained on this tokenizer). ``image_size``: run a convolutional tokenizer
    at that size (``checkpoint.load``); a decoder draws at the size it was trained at."""
    tok_dir = checkpoint.resolve_checkpoint(tokenizer_dir)
    if decoder_dir is not None and image_size is not None:
        raise ValueError("`image_size` resizes a tokenizer alone; a token-conditioned decoder draws at the size it was "
                         "trained at")
    tokenizer = checkpoint.load(tok_dir, kind="tokenizer", image_size=image_size)
    if decoder_dir is None:
        return tokenizer

    dec_dir = checkpoint.resolve_checkpoint(decoder_dir)
    checkpoint.recorded_tokenizer(dec_dir, tok_dir, kind="decoder")  # the decoder's own tokenizer, or an error
    return DecodedBy(tokenizer, checkpoint.load(dec_dir, kind="decoder"))


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # the generator's sampling arithmetic


class Pipeline:
    def __init__(self, tokenizer: Any, generator: Any, precision: str = "fp32", compile: bool = False):
        """``precision``: the generator's sampling arithmetic (autocast). ``compile``: sample through
        ``torch.compile``d steps (``Generator.compile_steps``: the same images at fp32; each new batch
        shape compiles first, which pays off only over many requests)."""
        check_compatible(tokenizer.spec, generator.spec)
        if precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.tokenizer, self.generator, self.text = tokenizer, generator, generator.text
        if compile:
            generator.compile_steps()
        self.precision = precision  # the generator samples under this autocast; tokenizers decode in fp32

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    @classmethod
    def load(cls, generator_dir: str | Path, tokenizer_dir: str | Path | None = None,
             decoder_dir: str | Path | None = None, precision: str = "fp32", compile: bool = False) -> "Pipeline":
        gen_dir = checkpoint.resolve_checkpoint(generator_dir)
        tokenizer = load_tokenizer(checkpoint.recorded_tokenizer(gen_dir, tokenizer_dir, kind="generator"), decoder_dir)
        return cls(tokenizer, checkpoint.load(gen_dir, kind="generator"), precision, compile)

    def to(self, device: torch.device | str) -> "Pipeline":
        self.tokenizer.to(device)
        self.generator.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @torch.no_grad()
    def known_ids(self, init: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
        """Editing: the token ids of ``init`` images [B, 3, H, W], flat as the generator reads them,
        with -1 at every grid cell the box x0,y0,x1,y1 (in [0, 1]) touches: the ids to draw anew.
        Multi-scale tokens have a grid per scale: the box's cells at every scale are drawn (at the
        coarsest the box touches the whole map, so what lies outside it changes too)."""
        spec = self.tokenizer.spec
        if self.generator.spec.kind != "discrete":
            raise ValueError("editing keeps token ids; use a token generator (dalle, parti, muse or var), not diffusion")
        grids = [(s, s) for s in spec.scales] if spec.scales else [spec.grid]
        if grids == [None]:
            raise ValueError("editing a box needs tokens laid on a grid; these 1D tokens have no place in the image")
        box = check_box(box)
        cells = torch.cat([_box_cells(box, h, w) for h, w in grids]).repeat_interleave(self.generator.spec.levels)
        flat = self.generator.flat_ids(self.tokenizer.encode(init.to(self.device)))
        return flat.masked_fill(cells.to(flat.device)[None], -1)

    @torch.no_grad()
    def caption(self, images: torch.Tensor, sampling: SamplingConfig | None = None, batch_size: int = 64) -> list[str]:
        """Captions of ``images`` [B, 3, H, W] in [-1, 1]: the tokenizer's ids read by the generator
        (one trained in both orders, ``caption_share`` > 0); greedy unless ``sampling`` says
        otherwise, each chunk seeded with ``sampling.for_chunk(start)``."""
        if not hasattr(self.generator, "caption"):
            raise ValueError(f"{self.generator.registry_name} does not read images; a dalle generator trained with "
                             "`caption_share` > 0 captions them")
        captions = []
        for start in range(0, len(images), batch_size):
            ids = self.generator.flat_ids(self.tokenizer.encode(images[start : start + batch_size].to(self.device)))
            with self._autocast():
                text_ids = self.generator.caption(ids, None if sampling is None else sampling.for_chunk(start))
            captions += self.text.decode(text_ids.cpu())
        return captions

    @torch.no_grad()
    def __call__(self, prompts: list[str], sampling: SamplingConfig | None = None, batch_size: int = 64,
                 known: torch.Tensor | None = None) -> torch.Tensor:
        """Images [len(prompts), 3, H, W] in [-1, 1], on the CPU. ``sampling`` goes to
        ``generator.sample``; the chunk starting at prompt ``s`` uses ``sampling.for_chunk(s)``
        (seed + s), so a large request stays reproducible. ``known`` [len(prompts) or 1, N]: ids to
        keep, -1 where to draw (``known_ids``: editing a region)."""
        sampling = sampling if sampling is not None else SamplingConfig()
        if known is not None:
            known = known.expand(len(prompts), -1) if known.shape[0] == 1 else known
        images = []
        for start in range(0, len(prompts), batch_size):
            text_ids = self.text.encode(prompts[start : start + batch_size]).to(self.device)
            part = None if known is None else known[start : start + batch_size].to(self.device)
            with self._autocast():
                tokens = self.generator.sample(text_ids, sampling.for_chunk(start), known=part)
            if tokens.latents is not None:
                tokens.latents = tokens.latents.float()
            images.append(self.tokenizer.decode(tokens).clamp(-1, 1).float().cpu())
        return torch.cat(images)

    @torch.no_grad()
    def best_of(self, prompts: list[str], candidates: int, scorer: Any, sampling: SamplingConfig | None = None,
                batch_size: int = 64, known: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reranking, as DALL-E did with CLIP: ``candidates`` images per prompt, keeping the one a
        contrastive text-image ``scorer`` (``encode_images`` / ``encode_text``, unit embeddings)
        matches best to its prompt. Candidate 0 is the image ``self(prompts, sampling)`` draws;
        candidate c is drawn with ``sampling.for_chunk(c * len(prompts))``, so no seed repeats and the
        best of N never scores below one sample at the same seed. Returns (images, their scores)."""
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        sampling = sampling if sampling is not None else SamplingConfig()
        text = scorer.encode_text(prompts).float()
        best, best_scores = None, None
        for c in range(candidates):
            images = self(prompts, sampling.for_chunk(c * len(prompts)), batch_size, known=known)
            scores = torch.cat([(scorer.encode_images(x).float() * t).sum(-1).cpu()
                                for x, t in zip(images.split(256), text.split(256))])
            if best is None:
                best, best_scores = images, scores
            else:
                better = scores > best_scores
                best[better], best_scores[better] = images[better], scores[better]
        return best, best_scores
