"""Effective bits of a continuous tokenizer: what its latents cost once quantized as finely as its
decoder needs, so that continuous and discrete tokenizers share one bits-per-image axis.

A float32 latent is stored in 32 bits, but no one stores a latent that way: a codec quantizes it
and entropy-codes the result (Balle et al., "End-to-end optimized image compression", ICLR 2017,
measure a continuous latent by the entropy of its uniformly quantized values). Here:

1. every image's latents ``z`` are encoded once and rounded to a uniform grid of step ``s``,
   ``q = s * round(z / s)``, then decoded;
2. steps are swept from coarse to fine, geometrically: octaves down from the widest channel's range
   (``s_k = range / 2^k``), then quarter octaves between the last one that fails and the first
   that passes; the chosen step is the coarsest whose mean PSNR is at most ``tolerance_db``
   (0.1 dB) below the unquantized latents' (with an exact, infinite reference a step passes only
   when it stays exact). With ``step_images`` the sweep runs on the first that many images (a
   large autoencoder on a CPU decodes the set a dozen times otherwise) and the chosen step is
   decoded once on the whole set, which the reported PSNR is;
3. the bits are the empirical (plug-in) entropy of the indices ``round(z / s)``, one histogram per
   latent channel over every image and token position, summed over channels and multiplied by the
   tokens per image.

Per channel rather than one histogram over all values: channels have their own scales, and the
entropy of a pooled histogram is at least the mean of the per-channel ones, so pooling would charge
for mixing. The count is what an entropy coder with a fixed per-channel distribution would spend;
it ignores the dependence between positions and channels (a context model would spend less) and
the plug-in estimate is biased low by about (distinct values - 1) / (2 ln 2 x samples) bits per
channel, negligible at the thousands of samples per channel a study has.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from trilemma.metrics import scores

FLOAT_BITS = 32  # storage of one float32 latent value
TOLERANCE_DB = 0.1  # PSNR a quantized latent may cost against the unquantized one
OCTAVES = 24  # the finest step tried is the widest channel's range / 2^24
REFINE = 4  # steps per octave once the passing octave is found


@dataclass(frozen=True)
class EffectiveBits:
    """The result of ``effective_bits``; steps are in latent units, PSNR in dB."""

    bits_per_image: float | None  # None when no step of the sweep met the tolerance
    step: float | None  # the chosen (coarsest passing) step
    psnr: float  # the unquantized latents' mean PSNR
    psnr_quantized: float | None  # at ``step``
    coarser_step: float | None  # the next coarser step tried, which failed (None: the coarsest passed; with no
    # passing step, the finest tried)
    coarser_psnr: float | None  # at ``coarser_step`` (on the images the sweep ran on)
    step_images: int  # how many images the sweep chose the step on (the first ones)


def quantize(latents: torch.Tensor, step: float) -> torch.Tensor:
    """Integer indices ``round(latents / step)`` (the quantized values are ``step`` times these)."""
    return torch.round(latents.double() / step).long()


def entropy_bits(indices: torch.Tensor) -> float:
    """Sum over channels of the empirical entropy (bits) of ``indices`` [samples, channels]."""
    total = 0.0
    for column in indices.T:
        _, counts = torch.unique(column, return_counts=True)
        p = counts.double() / counts.sum()
        total += float(-(p * torch.log2(p)).sum())
    return total


def _passes(psnr: float, reference: float, tolerance_db: float) -> bool:
    if math.isinf(reference):
        return math.isinf(psnr)
    return psnr >= reference - tolerance_db


@torch.no_grad()
def effective_bits(tokenizer, images: torch.Tensor, tolerance_db: float = TOLERANCE_DB,
                   batch_size: int = 64, prompt=None, progress: bool = False,
                   encoded: tuple[list, float] | None = None, step_images: int | None = None) -> EffectiveBits:
    """Effective bits per image of continuous ``tokenizer`` on ``images`` [N, 3, H, W] in [-1, 1]
    (module docstring), encoded with ``prompt`` when given. PSNR is the mean over images of
    reconstructions clamped to [-1, 1], as in ``evaluate_reconstruction``; the tokenizer runs in
    eval mode (its mode is restored). ``progress``: a bar counting the decodes of the set (one per
    step tried; a large autoencoder spends minutes here on a CPU). ``encoded``: (the tokens of
    ``images`` in batches of ``batch_size``, their unquantized mean PSNR) when the caller has them
    (``evaluate_reconstruction``), so the set is not encoded and decoded twice. ``step_images``: choose
    the step on the first that many images (None: all of them); the entropy counts every image."""
    if step_images is not None and step_images < 1:
        raise ValueError(f"`step_images` must be >= 1 or None, got {step_images}")
    if tokenizer.spec.discrete:
        raise ValueError("effective bits are for continuous tokenizers; a discrete one has `bits_per_image`")
    if tolerance_db <= 0:
        raise ValueError(f"`tolerance_db` must be > 0, got {tolerance_db}")
    was_training = tokenizer.training
    try:
        with tqdm(unit="decode", desc="effective bits", disable=not progress) as bar:
            return _effective_bits(tokenizer.eval(), images, tolerance_db, batch_size, prompt, bar, encoded,
                                   len(images) if step_images is None else min(step_images, len(images)))
    finally:
        tokenizer.train(was_training)


def _effective_bits(tokenizer, images: torch.Tensor, tolerance_db: float, batch_size: int, prompt,
                    bar: tqdm, encoded: tuple[list, float] | None, step_images: int) -> EffectiveBits:
    param = next(tokenizer.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    batches = [x.to(device=device, dtype=torch.float32) for x in images.split(batch_size)]
    reference = None  # the unquantized latents' mean PSNR on every image
    if encoded is not None:
        tokens, reference = encoded
        if len(tokens) != len(batches):
            raise ValueError(f"`encoded` holds {len(tokens)} batches of tokens, `images` split by {batch_size} makes {len(batches)}")
    else:
        tokens = [tokenizer.encode(x) if prompt is None else tokenizer.encode(x, prompt) for x in batches]

    pairs = list(zip(batches, tokens))
    search = _first(pairs, step_images)  # what the sweep decodes

    def mean_psnr(step: float | None, pairs: list = search) -> float:
        values = []
        for x, t in pairs:
            z = t.latents if step is None else quantize(t.latents, step).to(t.latents.dtype) * step
            recon = tokenizer.decode(dataclasses.replace(t, latents=z)).float().clamp(-1, 1)
            values.append(scores.psnr(recon, x).double())
        bar.update(1)
        return torch.cat(values).mean().item()

    valid = torch.cat([t.latents[t.mask.bool()] if t.mask is not None else t.latents.flatten(0, 1) for t in tokens])
    valid = valid.double().cpu()  # [valid tokens, latent_dim]
    if not len(valid):
        raise ValueError("the tokenizer made no valid latents for these images")
    span = float((valid.max(0).values - valid.min(0).values).max())  # the widest channel's range
    span = span if span > 0 else float(valid.abs().max()) or 1.0  # constant latents: their magnitude
    whole = step_images == len(images)
    if reference is None and whole:
        reference = mean_psnr(None)
    search_reference = reference if whole else mean_psnr(None)
    tried: list[tuple[float, float]] = []  # (step, PSNR), coarse to fine

    def passes(step: float) -> bool:
        tried.append((step, mean_psnr(step)))
        return _passes(tried[-1][1], search_reference, tolerance_db)

    octave = next((k for k in range(OCTAVES + 1) if passes(span / 2**k)), None)
    if reference is None:
        reference = mean_psnr(None, pairs)
    if octave is None:
        return EffectiveBits(None, None, reference, None, *tried[-1], step_images)
    if octave > 0:  # quarter octaves between the last failing octave and the first passing one
        passing = tried.pop()
        if not any(passes(span / 2 ** (octave - 1 + j / REFINE)) for j in range(1, REFINE)):
            tried.append(passing)
    step, psnr_quantized = tried[-1]
    if not whole:
        psnr_quantized = mean_psnr(step, pairs)
    coarser = tried[-2] if len(tried) > 1 else (None, None)
    count = len(valid) / len(images)  # tokens per image
    bits = count * entropy_bits(quantize(valid, step))
    return EffectiveBits(bits, step, reference, psnr_quantized, *coarser, step_images)


def _first(pairs: list, n: int) -> list:
    """The (images, tokens) batches cut to their first ``n`` images."""
    out = []
    for x, t in pairs:
        if n <= 0:
            break
        out.append((x[:n], t[:n]) if len(x) > n else (x, t))
        n -= len(x)
    return out
