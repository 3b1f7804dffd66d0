"""Training the evaluation's scorers, the shapes probe and the contrastive text-image model, as Tasks
of the one loop: a run directory like every other model's (``model/``, ``metrics.csv``,
``eval.csv``), resumable, and ``trained`` loads a finished run instead of training again."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from trilemma import checkpoint
from trilemma.data import attributes_to_cells, load_dataset
from trilemma.data.text import TextTokenizer
from trilemma.metrics.contrastive import ContrastiveModel
from trilemma.metrics.probe import ShapesProbe
from trilemma.training.loop import Task, TrainConfig, TrainingError, init_distributed, train

VOCAB_ITEMS = 2000  # captions read to build a contrastive model's vocabulary
EVAL_ITEMS = 256  # held-out items scored at each evaluation


def probe_config(steps: int = 400, batch_size: int = 64, seed: int = 0) -> TrainConfig:
    """How the probe trains: AdamW at 2e-3 (torch's betas) with up to 50 warm-up steps and cosine
    decay to 0, bf16 autocast (about 1.6x faster on a CPU, as accurate; weights and inference in
    fp32), no clipping, no EMA."""
    return TrainConfig(steps=steps, batch_size=batch_size, lr=2e-3, betas=(0.9, 0.999), min_lr_ratio=0.0,
                       warmup_steps=max(1, min(50, steps // 10)), grad_clip=0.0, ema_decay=0.0,
                       mixed_precision="bf16", seed=seed)


def contrastive_config(steps: int = 200, batch_size: int = 128, seed: int = 0) -> TrainConfig:
    """How the contrastive model trains: as the probe, at 1e-3 (2e-3 was sometimes unstable early),
    weight decay 0.05 on its matrices, batches of distinct pairs (more negatives for InfoNCE)."""
    return dataclasses.replace(probe_config(steps, batch_size, seed), lr=1e-3, weight_decay=0.05)


def data_name(dataset: Any) -> str:
    """What a scorer's run records as its data: the dataset's repr (it names a shapes split or a
    folder), or its type and length where the repr is not a name (a list of items)."""
    name = repr(dataset)
    return name if len(name) <= 200 else f"{type(dataset).__name__} of {len(dataset)} items"


def _held_out(items: Any, n: int) -> list[dict]:
    return [items[i] for i in range(min(n, len(items)))] if items is not None else []


class ProbeTask(Task):
    """Per-cell attribute cross-entropy on shapes with their ground truth; held-out adherence."""

    def __init__(self, probe: ShapesProbe, dataset: Any, eval_items: list[dict], extra: dict[str, Any]):
        self.model, self.dataset, self.extra = probe, dataset, extra
        self.eval_items = eval_items

    def collate(self, items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([it["image"] for it in items]), torch.stack([attributes_to_cells(it["attributes"]) for it in items])

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        images, cells = batch
        return model(images, cells)

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        if not self.eval_items:
            return {}
        images = torch.stack([it["image"] for it in self.eval_items])
        scores = model.score(images, [it["attributes"] for it in self.eval_items])
        return {k: v for k, v in scores.items() if v is not None}

    def checkpoint_extra(self) -> dict[str, Any]:
        return self.extra


class ContrastiveTask(Task):
    """Symmetric InfoNCE over batches of distinct (image, caption) pairs; held-out R-precision."""

    distinct_items = True

    def __init__(self, model: ContrastiveModel, dataset: Any, eval_items: list[dict], extra: dict[str, Any]):
        self.model, self.dataset, self.extra = model, dataset, extra
        self.eval_items = eval_items

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Decay the matrices, not the embeddings, biases and norms (as CLIP does)."""
        decay, plain = [], []
        for name, p in model.named_parameters():
            (decay if p.ndim >= 2 and "emb" not in name else plain).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]

    def collate(self, items: list[dict]) -> tuple[torch.Tensor, list[str]]:
        return torch.stack([it["image"] for it in items]), [it["caption"] for it in items]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, list[str]], step: int) -> dict[str, torch.Tensor]:
        images, captions = batch
        return model(images, captions)

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        if len(self.eval_items) < 2:
            return {}
        images = torch.stack([it["image"] for it in self.eval_items])
        captions = [it["caption"] for it in self.eval_items]
        return {"r_precision": model.r_precision(images, captions, candidates=min(32, len(captions)))}

    def checkpoint_extra(self) -> dict[str, Any]:
        return self.extra


def train_probe(out: str | Path, cfg: TrainConfig | None = None, size: int = 32, dataset: Any = None,
                config: ShapesProbe.Config | None = None, resume: bool = False, eval_items: int = EVAL_ITEMS) -> dict:
    """Train a shapes probe into the run directory ``out`` on ``dataset`` (shapes items with their
    ``attributes``; default the shapes train split at ``size``), scored on the val split."""
    cfg = cfg if cfg is not None else probe_config()
    config = config if config is not None else ShapesProbe.Config(image_size=size)
    if config.image_size != size:
        raise ValueError(f"config.image_size is {config.image_size} but size is {size}")
    init_distributed()
    torch.manual_seed(cfg.seed)
    probe = ShapesProbe(config)
    dataset = dataset if dataset is not None else load_dataset("shapes", "train", size=size, seed=cfg.seed)
    val = _held_out(load_dataset("shapes", "val", size=size, seed=cfg.seed, length=eval_items), eval_items)
    return train(ProbeTask(probe, dataset, val, {"data": data_name(dataset)}), cfg, out, resume=resume)


def train_contrastive(out: str | Path, dataset: Any, cfg: TrainConfig | None = None, text: TextTokenizer | None = None,
                      config: ContrastiveModel.Config | None = None, resume: bool = False, held_out: Any = None,
                      eval_items: int = EVAL_ITEMS) -> dict:
    """Train a contrastive model into the run directory ``out`` on ``dataset`` items ``{"image",
    "caption"}``, scored on ``held_out`` items when given. ``text`` defaults to a vocabulary of the
    first ``VOCAB_ITEMS`` captions (later unknown words map to <unk>)."""
    if len(dataset) < 2:
        raise ValueError(f"contrastive training needs at least 2 captioned images, got {len(dataset)}")
    cfg = cfg if cfg is not None else contrastive_config()
    if cfg.batch_size > len(dataset):  # a batch holds distinct pairs
        cfg = dataclasses.replace(cfg, batch_size=len(dataset))
    if text is None:
        text = TextTokenizer.build([dataset[i]["caption"] for i in range(min(VOCAB_ITEMS, len(dataset)))])
    size = int(dataset[0]["image"].shape[-1])
    init_distributed()
    torch.manual_seed(cfg.seed)
    model = ContrastiveModel(config if config is not None else ContrastiveModel.Config(image_size=size), text=text)
    task = ContrastiveTask(model, dataset, _held_out(held_out, eval_items), {"data": data_name(dataset)})
    return train(task, cfg, out, resume=resume)


def trained(out: str | Path, train_fn: Callable[..., dict], cfg: TrainConfig, data: Any = None, **kwargs: Any) -> nn.Module:
    """The scorer of run directory ``out``, as it is when its run is finished; a new run is trained
    by ``train_fn(out, cfg=cfg, ...)`` first, a cut one resumes with its own settings. A run
    recorded on other data than ``data`` (when given) is refused, never silently reused."""
    out, ckpt = Path(out), Path(out) / "model"
    meta = checkpoint.read_config(ckpt, kind="features") if (ckpt / checkpoint.CONFIG_FILE).is_file() else None
    if meta is not None and data is not None and meta.get("data") != data_name(data):
        raise TrainingError(f"{out} holds a scorer trained on {meta.get('data')}, not on {data_name(data)}; "
                            "give another directory for this data")
    if meta is not None and (out / "train_config.json").is_file():
        planned = json.loads((out / "train_config.json").read_text())
        cfg = TrainConfig(**{**planned, "betas": tuple(planned["betas"])})
    if meta is None or int(meta.get("step", 0)) < cfg.steps:
        train_fn(out, cfg=cfg, resume=meta is not None, **({"dataset": data} if data is not None else {}), **kwargs)
    return checkpoint.load(ckpt, kind="features").eval()
