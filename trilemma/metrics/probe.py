"""The shapes probe: a classifier that reads every grid cell of a shapes image, the ruler for generators.

Idea: the shapes world has exact ground truth (``trilemma.data.shapes``), so instead of asking a
captioning model or CLIP whether an image matches its prompt, we train a small classifier on the
real training images and read each of the 9 cells: which shape (or empty), which colour, which
size. Prompt adherence is then an exact per-attribute accuracy (as GenEval / T2I-CompBench score
objects with a detector, here with a probe that is ~100% right on real images).

The probe is a ``DomainFeatures`` CNN (``trilemma.metrics.features``) whose last feature map is
average-pooled onto the 3x3 grid, with one linear head per cell (shape: ``len(SHAPES) + 1``
classes, 0 = empty; colour; size). Colour and size losses count only on occupied cells. An
auxiliary head on the *globally pooled* features (the vector FID sees) makes those features carry
the layout too, so domain FID notices objects drawn in the wrong cells. The trained backbone,
frozen, is ``probe.features``: the domain feature network for FID / KID / precision-recall.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from trilemma.data import COLORS, POSITIONS, SHAPES, SIZES, attributes_to_cells
from trilemma.metrics.features import DomainFeatures, FeatureExtractor
from trilemma.registry import register

CELLS = len(POSITIONS)
N_SHAPE, N_COLOR, N_SIZE = len(SHAPES) + 1, len(COLORS), len(SIZES)
N_OUT = N_SHAPE + N_COLOR + N_SIZE  # logits per cell: [shape | colour | size]


@register("features", "shapes-probe")
class ShapesProbe(nn.Module):
    """DomainFeatures backbone + per-cell attribute heads: ``cell_logits`` [B, 9, 13], ``forward`` the training losses."""

    @dataclass
    class Config:
        image_size: int = 32  # shapes resolution trained on; other sizes are resized to it
        channels: tuple[int, ...] = (32, 64, 128)  # backbone widths before the last block
        dim: int = 256  # feature size (width of the backbone's last block)
        groups: int = 8  # GroupNorm groups
        # Weight of the auxiliary head on the globally pooled features (0 = off). 0.5 slowed the cell
        # heads' convergence ~2x; 0.1 does not, and still makes the pooled features carry the layout.
        pooled_weight: float = 0.1

    def __init__(self, config: Config | None = None):
        super().__init__()
        self.config = config if config is not None else self.Config()
        c = self.config
        self.backbone = DomainFeatures(
            DomainFeatures.Config(channels=tuple(c.channels), dim=c.dim, image_size=c.image_size, groups=c.groups)
        )
        # One linear classifier per cell: einsum over a [cell, out, dim] weight.
        self.cell_weight = nn.Parameter(torch.randn(CELLS, N_OUT, c.dim) * c.dim**-0.5)
        self.cell_bias = nn.Parameter(torch.zeros(CELLS, N_OUT))
        self.pooled_head = nn.Linear(c.dim, CELLS * N_OUT)

    @property
    def features(self) -> FeatureExtractor:
        """The backbone: images -> globally pooled features [B, dim], for domain FID / KID / PR."""
        return self.backbone

    def _cell_logits(self, fmap: torch.Tensor) -> torch.Tensor:
        cells = rearrange(F.adaptive_avg_pool2d(fmap, 3), "b d h w -> b (h w) d")
        return torch.einsum("bcd,cod->bco", cells, self.cell_weight.to(cells.dtype)) + self.cell_bias.to(cells.dtype)

    def cell_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Per-cell logits [B, 9, 13]: shape (0 = empty) | colour | size, cells in raster order."""
        return self._cell_logits(self.backbone.feature_map(images))

    def forward(self, images: torch.Tensor, cells: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training losses: cross-entropy against ground-truth cells [B, 9, 3] (``attributes_to_cells``
        format); ``"loss"`` is what is optimised."""
        fmap = self.backbone.feature_map(images)
        out = {"cells": _cells_loss(self._cell_logits(fmap).float(), cells)}
        if self.config.pooled_weight > 0:
            pooled = self.pooled_head(fmap.mean(dim=(2, 3))).float()
            out["pooled"] = _cells_loss(rearrange(pooled, "b (c o) -> b c o", c=CELLS), cells)
        out["loss"] = out["cells"] + self.config.pooled_weight * out.get("pooled", 0.0)
        return out

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Predicted cells LongTensor [B, 9, 3]: (shape index + 1 or 0 = empty, colour, size).

        Empty cells report colour 0 and size 0, as ``attributes_to_cells`` does.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            preds = []
            for x in images.split(batch_size):
                logits = self.cell_logits(x.to(device=device, dtype=torch.float32)).float().cpu()
                preds.append(_decode(logits))
        finally:
            self.train(was_training)
        return torch.cat(preds) if preds else torch.zeros(0, CELLS, 3, dtype=torch.long)

    def score(self, images: torch.Tensor, attributes: list[list[dict]], batch_size: int = 256) -> dict:
        """Prompt adherence of ``images`` to the objects they were prompted with (see ``adherence``)."""
        if len(images) != len(attributes):
            raise ValueError(f"got {len(images)} images but {len(attributes)} attribute lists")
        return adherence(self.predict(images, batch_size), attributes)


def _cells_loss(logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    shape_logits, color_logits, size_logits = logits.split([N_SHAPE, N_COLOR, N_SIZE], dim=-1)
    occupied = cells[..., 0] > 0  # colour and size of an empty cell mean nothing
    loss = F.cross_entropy(shape_logits.flatten(0, 1), cells[..., 0].flatten())
    if occupied.any():
        loss = loss + F.cross_entropy(color_logits[occupied], cells[..., 1][occupied])
        loss = loss + F.cross_entropy(size_logits[occupied], cells[..., 2][occupied])
    return loss


def _decode(logits: torch.Tensor) -> torch.Tensor:
    shape_logits, color_logits, size_logits = logits.split([N_SHAPE, N_COLOR, N_SIZE], dim=-1)
    shape = shape_logits.argmax(-1)
    empty = shape == 0
    return torch.stack(
        [shape, color_logits.argmax(-1).masked_fill(empty, 0), size_logits.argmax(-1).masked_fill(empty, 0)], -1
    )


def adherence(predicted: torch.Tensor, attributes: list[list[dict]]) -> dict:
    """Score predicted cells [B, 9, 3] against the prompted objects of each image.

    Per prompted object (averaged over all objects of all images):
    ``position_acc`` the prompted cell holds an object; ``shape_acc`` / ``color_acc`` /
    ``size_acc`` that cell holds the prompted shape / colour / size (an empty cell is wrong);
    ``object_acc`` every prompted attribute of the object is right. A colour or size given as
    None (a prompt that omits it) is not scored: it is left out of that accuracy's average and
    does not count against ``object_acc``; an accuracy with nothing to score is None.
    Per image: ``image_acc`` every object is right and no other cell holds an object.
    """
    if len(predicted) != len(attributes):
        raise ValueError(f"got {len(predicted)} predictions but {len(attributes)} attribute lists")
    if len(attributes) == 0:
        raise ValueError("nothing to score: no images")
    hits = {k: [] for k in ("shape", "color", "size", "position", "object")}
    image_hits = []
    for pred, objects in zip(predicted.tolist(), attributes):
        want = attributes_to_cells(objects).tolist()
        image_ok = True
        for (p_shape, p_color, p_size), (w_shape, w_color, w_size) in zip(pred, want):
            if w_shape == 0:
                image_ok &= p_shape == 0  # an extra object fails the image
                continue
            present = p_shape > 0
            right = {"position": present, "shape": p_shape == w_shape}
            if w_color >= 0:
                right["color"] = present and p_color == w_color
            if w_size >= 0:
                right["size"] = present and p_size == w_size
            right["object"] = all(right.values())
            image_ok &= right["object"]
            for k, v in right.items():
                hits[k].append(v)
        image_hits.append(image_ok)
    return {**{f"{k}_acc": _mean(v) for k, v in hits.items()}, "image_acc": _mean(image_hits)}


def _mean(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None
