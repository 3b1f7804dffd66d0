"""The scorers a study reads its numbers with, each a training run of its own: the shapes probe
(prompt adherence and domain features on shapes) and the contrastive model (adherence and
reranking on any captioned data). Each is trained once into its run directory and loaded after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trilemma import checkpoint
from trilemma.data import load_dataset
from trilemma.metrics.contrastive import ContrastiveModel
from trilemma.metrics.probe import ShapesProbe
from trilemma.training.scorers import contrastive_config, probe_config, train_contrastive, train_probe, trained


def shapes_probe(run: str | Path, size: int = 32, steps: int = 400, seed: int = 0, dataset: Any = None) -> ShapesProbe:
    """The probe of run directory ``run``, trained there first (``steps`` on ``dataset``, default
    the shapes train split) unless the run is finished; a probe for another size is refused."""
    probe = trained(run, train_probe, probe_config(steps, seed=seed), data=dataset, size=size)
    if probe.config.image_size != size:
        raise ValueError(f"{run} holds a probe of {probe.config.image_size}x{probe.config.image_size} images, "
                         f"not {size}x{size}; give another probe directory")
    return probe


def contrastive_scorer(run: str | Path, dataset: Any, steps: int = 200, seed: int = 0,
                       held_out: Any = None) -> ContrastiveModel:
    """The contrastive model of run directory ``run``, trained there on ``dataset`` first unless a
    finished run on that same data is there."""
    return trained(run, train_contrastive, contrastive_config(steps, seed=seed), data=dataset, held_out=held_out)


def trained_on(run: str | Path) -> str:
    """The data a finished scorer run recorded it was trained on (its dataset's name), as read back."""
    meta = checkpoint.read_config(Path(run) / "model", kind="features")
    return str(meta.get("data", "unrecorded data"))


def rerank_scorer(generator_dir: str | Path, size: int) -> ContrastiveModel:
    """The contrastive model kept beside a generator run (``RUN/contrastive``), trained on the
    generator's recorded training data the first time it is asked for."""
    gen_dir = checkpoint.resolve_checkpoint(generator_dir)
    data = checkpoint.read_config(gen_dir, kind="generator").get("data")
    if data is None:
        raise ValueError(f"{gen_dir} does not record its training data; give the scorer (a contrastive model) yourself")
    run = gen_dir.parent if gen_dir.name == "model" else gen_dir
    return contrastive_scorer(run / "contrastive", load_dataset(data, split="train", size=size))
