"""The promptable tokenizer's region study: PSNR inside a box with and without the box as a prompt,
and what the prompt costs outside it, at the budgets asked for (the demo: k <= K/4; the bench: every
k). Shared by the demo and ``bench/bench_promptable.py``. The box of a shapes image is the grid cell of its first object
(shapes places objects in a 3x3 grid)."""

from __future__ import annotations

import torch

from trilemma.data import POSITIONS
from trilemma.metrics.scores import psnr
from trilemma.tokenizers.prompts import box_mask
from trilemma.tokens import Prompt


@torch.no_grad()
def reconstruct(tok, images: torch.Tensor, prompt: Prompt | None, batch: int = 250) -> torch.Tensor:
    """``decode(encode(images, prompt))`` in chunks; per-image boxes are split with the images."""
    parts = []
    for start in range(0, len(images), batch):
        p = prompt if prompt is None or prompt.boxes is None else Prompt(budget=prompt.budget, boxes=prompt.boxes[start : start + batch])
        parts.append(tok.decode(tok.encode(images[start : start + batch], p)).clamp(-1, 1))
    return torch.cat(parts)


def first_object_boxes(items: list[dict]) -> torch.Tensor:
    """[N, 1, 4] boxes: the 3x3 grid cell of each shapes item's first object."""
    cells = [POSITIONS.index(it["attributes"][0]["position"]) for it in items]
    return torch.tensor([[[c % 3 / 3, c // 3 / 3, (c % 3 + 1) / 3, (c // 3 + 1) / 3]] for c in cells])


def region_study(tok, images: torch.Tensor, boxes: torch.Tensor, budgets: list[int]) -> list[dict]:
    """One row per budget ``k``: ``psnr`` of the whole image (unprompted), and inside / outside the
    boxes without and with them as prompts (``psnr_in_box``, ``psnr_in_box_prompted``,
    ``psnr_outside``, ``psnr_outside_prompted``), means over images, in dB."""
    inside = box_mask(Prompt(boxes=boxes), len(images), images.shape[-1], images.device)
    rows = []
    for k in budgets:
        plain = reconstruct(tok, images, Prompt(budget=k))
        boxed = reconstruct(tok, images, Prompt(budget=k, boxes=boxes))
        rows.append({
            "k": k, "bits": k * tok.spec.bits_per_token, "psnr": psnr(plain, images).mean().item(),
            "psnr_in_box": psnr(plain, images, mask=inside).mean().item(),
            "psnr_in_box_prompted": psnr(boxed, images, mask=inside).mean().item(),
            "psnr_outside": psnr(plain, images, mask=1 - inside).mean().item(),
            "psnr_outside_prompted": psnr(boxed, images, mask=1 - inside).mean().item(),
        })
    return rows
