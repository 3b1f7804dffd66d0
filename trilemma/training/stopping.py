"""How training stops on a non-finite loss: every rank together, with one error, keeping the last
good checkpoint (the check runs before the optimizer steps, so nothing non-finite is ever saved)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from trilemma import checkpoint


class TrainingError(RuntimeError):
    pass


def stop_if_non_finite(acc: Any, step: int, values: dict[str, float], key: str, ckpt_dir: Path) -> None:
    """Stop every rank together when ``values[key]`` (the model's ``loss``, the critic's ``disc``,
    the gradient norm) is non-finite on any rank: one that stopped alone would leave the others
    waiting in the next all-reduce. One flag is all-reduced each call; the ranks' reports are
    gathered only on the way out, so every rank raises the same one-line error."""
    finite = math.isfinite(values[key])
    bad = "" if finite else ", ".join(f"{k}={v:.4g}" for k, v in values.items() if not math.isfinite(v))
    if acc.num_processes == 1:
        if finite:
            return
        reports = [bad]
    else:
        if not acc.reduce(torch.tensor(float(not finite), device=acc.device), "sum").item():
            return
        gathered: list[Any] = [None] * acc.num_processes
        torch.distributed.all_gather_object(gathered, bad)
        reports = [f"rank {r}: {b}" for r, b in enumerate(gathered) if b]
    what = "critic loss" if key == "disc" else "loss"
    saved = (ckpt_dir / checkpoint.CONFIG_FILE).exists()
    kept = f"the last good checkpoint is {ckpt_dir}" if saved else "no checkpoint was written yet"
    raise TrainingError(
        f"non-finite {what} at step {step + 1} ({'; '.join(reports)}); stopped, {kept}. "
        "Lower `lr` or raise `warmup_steps` and resume with `resume=True`"
    )
