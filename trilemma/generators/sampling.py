"""Sampling and schedules as small pure functions (no module state, no hidden RNG).

Classifier-free guidance convention (Ho & Salimans 2022), used by every generator here:

    guided = uncond + cfg_scale * (cond - uncond)

so ``cfg_scale = 1`` is plain conditional sampling (the unconditional rows are then skipped),
``cfg_scale = 0`` is unconditional, and ``cfg_scale > 1`` pushes towards the prompt. Guidance is
applied to logits (autoregressive, masked) or to the predicted noise (diffusion).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch


SCHEDULERS = ("dpm++", "ddim")  # diffusion samplers (diffusers' DPM-Solver++ 2M and DDIM)


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0 = greedy (argmax); mar: scales the noise its head starts from
    top_k: int | None = None  # keep the k most likely ids (None = all)
    top_p: float | None = None  # keep the smallest set with this much probability mass (None = all)
    cfg_scale: float = 1.0  # classifier-free guidance scale (1 = none)
    seed: int | None = None  # None = nondeterministic
    steps: int | None = None  # parallel decoding / denoising / autoregressive steps (muse, diffusion, mar)
    scheduler: str | None = None  # diffusion sampler: "dpm++" or "ddim" (None = the generator's own)
    budget: int | None = None  # autoregressive on ordered 1D tokens: stop after this many tokens

    def __post_init__(self) -> None:
        check_sampling(self)

    def for_chunk(self, start: int) -> "SamplingConfig":
        """The config for the part of a request that starts at prompt ``start``: seed + start.

        The one place seeds are derived: a request split into chunks stays reproducible for a
        given chunk size, and no two chunks share a seed."""
        if self.seed is None or start == 0:
            return self
        chunk = copy.copy(self)  # already checked: not validated again
        object.__setattr__(chunk, "seed", self.seed + start)
        return chunk


def check_sampling(cfg: SamplingConfig) -> None:
    """Raise a ValueError naming the parameter for out-of-range values, first word the field's name
    (the CLI names the flag instead). What depends on the model (a budget within its tokens, a family
    that takes no budget) is ``Generator.check_request``'s."""
    if not (cfg.temperature >= 0 and math.isfinite(cfg.temperature)):
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {cfg.temperature}")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or unset), got {cfg.top_k}")
    if cfg.top_p is not None and not 0 < cfg.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {cfg.top_p}")
    if not (cfg.cfg_scale >= 0 and math.isfinite(cfg.cfg_scale)):
        raise ValueError(f"cfg_scale must be >= 0 (1 = no guidance), got {cfg.cfg_scale}")
    if cfg.steps is not None and cfg.steps < 1:
        raise ValueError(f"steps must be >= 1, got {cfg.steps}")
    if cfg.budget is not None and cfg.budget < 1:
        raise ValueError(f"budget must be >= 1, got {cfg.budget}")
    if cfg.scheduler is not None and cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {cfg.scheduler!r}")
    if cfg.seed is not None and not 0 <= cfg.seed < 2**63:
        raise ValueError(f"seed must be in [0, 2^63), got {cfg.seed}")


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Set all but the k largest logits (last axis) to -inf."""
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest prefix of ids, by descending
    probability, whose mass reaches p; the most likely id is always kept."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # mass of strictly more likely ids
    remove_sorted = mass_before >= p
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ids from logits [..., V] -> LongTensor [...]. temperature 0 is greedy."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    probs = logits.softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    ids = torch.multinomial(flat, 1, generator=generator)
    return ids.reshape(probs.shape[:-1])


def drop_condition(text_ids: torch.Tensor, null_ids: torch.Tensor, p: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning dropout for classifier-free guidance: replace each row by ``null_ids`` with
    probability p. Returns (ids, dropped: BoolTensor [B])."""
    dropped = torch.rand(text_ids.shape[0], generator=generator, device=text_ids.device) < p
    ids = torch.where(dropped[:, None], null_ids.to(text_ids)[None, :].expand_as(text_ids), text_ids)
    return ids, dropped


def mask_schedule(ratio: torch.Tensor | float, kind: str = "cosine") -> torch.Tensor:
    """Fraction of tokens still masked at progress ``ratio`` in [0, 1] (MaskGIT, Chang et al. 2022)."""
    r = torch.as_tensor(ratio, dtype=torch.float32)
    if kind == "cosine":
        return torch.cos(r * math.pi / 2)
    if kind == "linear":
        return 1 - r
    if kind == "square":
        return 1 - r**2
    raise ValueError(f"unknown mask schedule {kind!r}; choose cosine, linear or square")


def random_mask(batch: int, n: int, kind: str = "cosine", device: torch.device | str = "cpu") -> torch.Tensor:
    """Masked-model training (MaskGIT, Muse, MAR): per row, a progress r ~ U(0, 1) and a uniformly
    random set of ceil(n * mask_schedule(r)) positions (at least one), from the global RNG.
    Returns BoolTensor [batch, n], True where masked."""
    progress = torch.rand(batch, device=device)
    count = (mask_schedule(progress, kind).to(device) * n).ceil().clamp(1, n)
    rank = torch.rand(batch, n, device=device).argsort(-1).argsort(-1)
    return rank < count[:, None]


def masked_count(step: int, steps: int, total: int, still_masked: int, kind: str = "cosine") -> int:
    """Tokens left masked after decoding step ``step`` (0-based) of ``steps``: ``total`` times the
    schedule at progress (step + 1) / steps, but at least one token fewer than now (every step
    fixes something), and 0 after the last step."""
    if step >= steps - 1:
        return 0
    n = math.floor(total * float(mask_schedule((step + 1) / steps, kind)))
    return max(0, min(n, still_masked - 1))


def remask_least_confident(
    confidence: torch.Tensor,
    masked: torch.Tensor,
    count: int,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MaskGIT's selection (Chang et al. 2022): of the positions sampled this step (``masked``
    [B, N], True where the input was masked), the ``count`` least confident per row stay masked.
    Positions fixed in earlier steps are never re-masked. ``confidence`` [B, N] is the probability
    of each sampled id; ``noise`` > 0 adds ``noise`` * Gumbel noise to the log-confidence, so the
    choice is randomised early in decoding (the "choice temperature"). Returns BoolTensor [B, N]."""
    score = confidence.float().clamp_min(1e-30).log()
    if noise > 0:
        u = torch.rand(confidence.shape, generator=generator, device=confidence.device).clamp(1e-20, 1 - 1e-7)
        score = score + noise * -torch.log(-torch.log(u))
    score = score.masked_fill(~masked, float("inf"))  # fixed tokens rank last: never chosen
    rank = score.argsort(dim=-1).argsort(dim=-1)
    return (rank < count) & masked
