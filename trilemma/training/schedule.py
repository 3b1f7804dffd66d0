"""The learning-rate schedule of every optimisation in trilemma: linear warm-up, then cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(step: int, steps: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``steps``.

    Rises linearly over the first ``warmup`` steps to 1 ((step + 1) / warmup), then follows half a
    cosine down to ``min_ratio`` at ``steps``.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
