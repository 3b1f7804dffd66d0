"""The training loop's random state: seeds derived by hashing, per-rank streams, and the state saved
in a checkpoint so that a resumed run draws what the uninterrupted one would have drawn.

Under DDP every rank builds its models from one seed (identical initial weights), then draws from its
own stream: diffusion timesteps and noise, Muse masks, caption dropout and promptable budgets are
random per sample, and N ranks drawing one stream would train on one draw N times."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def mix(*xs: Any) -> int:
    """A 56-bit seed hashed from ``xs`` (seed, step, rank...): nearby inputs give unrelated seeds."""
    return int.from_bytes(hashlib.sha256(repr(xs).encode()).digest()[:7], "little")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``'s stream: ``seed`` itself on rank 0 (a one-process run draws what it
    always drew), a hash of (seed, rank) on the others."""
    return seed if rank == 0 else mix(seed, "rank", rank)


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device); numpy takes 32 bits of it."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_kept() -> Iterator[None]:
    """Run a block (evaluation: sampling draws) without moving the training stream: a run that
    evaluates on the step it saved continues exactly as the run resumed from that save."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
