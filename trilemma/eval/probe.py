"""The shapes probe: a classifier that reads every grid cell of a shapes image, the ruler for generators.

Idea: the shapes world has exact ground truth (``trilemma.data.shapes``), so instead of asking a
captioning model or CLIP whether an image matches its prompt, we train a small classifier on the
real training images and read each of the 9 cells: which shape (or empty), which colour, which
size. Prompt adherence is then an exact per-attribute accuracy (as GenEval / T2I-CompBench score
objects with a detector, here with a probe that is ~100% right on real images).

The probe is a ``DomainFeatures`` CNN (``trilemma.eval.features``) whose last feature map is
average-pooled onto the 3x3 grid, with one linear head per cell (shape: ``len(SHAPES) + 1``
classes, 0 = empty; colour; size). Colour and size losses count only on occupied cells. An
auxiliary head on the *globally pooled* features (the vector FID sees) makes those features carry
the layout too, so domain FID notices objects drawn in the wrong cells. The trained backbone,
frozen, is ``probe.features``: the domain feature network for FID / KID / precision-recall.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from trilemma import checkpoint
from trilemma.data import COLORS, POSITIONS, SHAPES, SIZES, attributes_to_cells, load_dataset
from trilemma.eval.features import DomainFeatures, FeatureExtractor
from trilemma.registry import register
from trilemma.training.schedule import warmup_cosine

CELLS = len(POSITIONS)
N_SHAPE, N_COLOR, N_SIZE = len(SHAPES) + 1, len(COLORS), len(SIZES)
N_OUT = N_SHAPE + N_COLOR + N_SIZE  # logits per cell: [shape | colour | size]


@register("features", "shapes-probe")
class ShapesProbe(nn.Module):
    """DomainFeatures backbone + per-cell attribute heads. ``forward`` gives logits [B, 9, 13]."""

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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-cell logits [B, 9, 13]: shape (0 = empty) | colour | size, cells in raster order."""
        return self._cell_logits(self.backbone.feature_map(images))

    def loss(self, images: torch.Tensor, cells: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy against ground-truth cells [B, 9, 3] (``attributes_to_cells`` format)."""
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
                logits = self(x.to(device=device, dtype=torch.float32)).float().cpu()
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


def _shapes_batch(dataset, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i % len(dataset)] for i in range(start, start + count)]
    images = torch.stack([it["image"] for it in items])
    return images, torch.stack([attributes_to_cells(it["attributes"]) for it in items])


def train_probe(
    size: int = 32,
    steps: int = 400,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    lr: float = 2e-3,
    bf16: bool = True,
    config: ShapesProbe.Config | None = None,
    dataset: Any = None,
) -> ShapesProbe:
    """Train a probe on fresh shapes training images (split "train", dataset seed ``seed``).

    AdamW with a short linear warm-up and cosine decay; every step draws the next ``batch_size``
    images of the (infinite, deterministic) training stream, so no image is seen twice. ``bf16``
    runs the backbone under CPU/GPU bf16 autocast (losses in fp32): ~1.6x faster on CPU with the
    same accuracy; the weights stay fp32 and inference runs in fp32. ``dataset``: shapes items to
    train on instead (e.g. a ``data.InMemory`` pool shared with other trainings), cycled in order.
    """
    config = config if config is not None else ShapesProbe.Config(image_size=size)
    if config.image_size != size:
        raise ValueError(f"config.image_size={config.image_size} but size={size}")
    torch.manual_seed(seed)
    probe = ShapesProbe(config)
    data = dataset if dataset is not None else load_dataset("shapes", "train", size=size, seed=seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, min(50, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, warmup))
    probe.train()
    start = time.perf_counter()
    with tqdm(range(steps), desc="shapes probe", disable=not progress) as bar:
        for step in bar:
            images, cells = _shapes_batch(data, step * batch_size, batch_size)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                losses = probe.loss(images, cells)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            sched.step()
            if step % 10 == 0:
                bar.set_postfix(loss=f"{losses['loss'].item():.4f}")
    probe.train_seconds = time.perf_counter() - start
    return probe.eval()


def load_or_train_probe(
    cache_dir: Path, size: int = 32, steps: int = 400, seed: int = 0, progress: bool = True, dataset: Any = None
) -> ShapesProbe:
    """The probe saved in ``cache_dir`` if it is one for ``size``; else train one and save it there.

    The save is atomic (``checkpoint.save``), so concurrent or killed runs never leave half a probe.
    A checkpoint of another kind or size in ``cache_dir`` is replaced, with a message.
    """
    cache_dir = Path(cache_dir)
    if (cache_dir / checkpoint.CONFIG_FILE).is_file():
        try:
            meta = checkpoint.read_config(cache_dir, kind="features")
            if meta["name"] == ShapesProbe.registry_name and meta["config"].get("image_size") == size:
                return checkpoint.load(cache_dir, kind="features")
            reason = f"it holds {meta['name']} for size {meta['config'].get('image_size')}"
        except checkpoint.CheckpointError as err:
            reason = str(err)
        print(f"retraining the shapes probe in {cache_dir}: {reason}, wanted shapes-probe for size {size}")
    probe = train_probe(size=size, steps=steps, seed=seed, progress=progress, dataset=dataset)
    checkpoint.save(probe, cache_dir, extra={"steps": steps, "seed": seed, "data": repr(dataset) if dataset is not None else "shapes"})
    return probe
