"""Generation evaluation: sample quality and prompt adherence of a text-to-image pipeline.

- Quality: FID (Heusel et al. 2017), KID (Binkowski et al. 2018) and improved precision / recall
  (Kynkaanniemi et al. 2019) of generated images against real reference images, in any feature
  network (``trilemma.metrics.features``: Inception, or the shapes probe's domain CNN).
- The floor: every feature metric is also computed between two disjoint real sets of the same
  size as the generated one (``floor`` vs ``reference``). FID is biased upwards at small N and the
  bias depends on N and the features, so a score only means something next to its floor: a
  perfect generator scores the floor, not 0.
- Adherence: on shapes, the probe reads every cell (``trilemma.metrics.probe``) and scores the
  prompted attributes exactly; on any captioned dataset, a small contrastive model
  (``trilemma.metrics.contrastive``) gives CLIPScore and R-precision.
- Throughput: generated images per second (tokens -> images included).

``score_generated`` does everything after sampling, so it can score any image set (e.g. real
test images "as if generated": FID near the floor, adherence near 1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from trilemma.data import load_dataset
from trilemma.generators.sampling import SamplingConfig
from trilemma.metrics import scores
from trilemma.metrics.features import FeatureExtractor, extract
from trilemma.studies.images import check_split, load_images, resolve_features
from trilemma.studies.scorers import contrastive_scorer, shapes_probe

R_PRECISION_CANDIDATES = 32  # captions ranked per image (own + 31 others), as is common practice


def _features(features: FeatureExtractor, images_or_features: torch.Tensor, batch_size: int, progress: bool):
    """Images [N, 3, H, W] -> features; a 2-D tensor is taken as precomputed features [N, dim]."""
    if images_or_features.ndim == 2:
        if images_or_features.shape[1] != features.dim:
            raise ValueError(f"precomputed features have dim {images_or_features.shape[1]}, the extractor {features.dim}")
        return images_or_features.float()
    return extract(features, images_or_features, batch_size=batch_size, progress=progress)


def _feature_scores(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    kid_mean, kid_std = scores.kid(real, fake)
    precision, recall = scores.precision_recall(real, fake)
    return {"fid": scores.fid_from_features(real, fake), "kid_mean": kid_mean, "kid_std": kid_std,
            "precision": precision, "recall": recall}  # fmt: skip


def score_generated(
    images: torch.Tensor,
    reference: torch.Tensor,
    floor: torch.Tensor,
    features: FeatureExtractor,
    prompts: list[str] | None = None,
    attributes: list | None = None,
    probe=None,
    contrastive=None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict:
    """Score generated ``images`` [N, 3, H, W] (one per prompt); see ``evaluate_generation``.

    ``reference`` and ``floor`` are two disjoint sets of real images (or their precomputed
    features [M, dim]); ``floor`` must hold exactly N images so that the floor is measured at the
    generated set's size. ``prompts`` are needed for the contrastive scores, ``attributes`` (the
    prompted objects, e.g. ``parse_caption(prompt)``) for the probe's.
    """
    n = len(images)
    if len(floor) != n:
        raise ValueError(
            f"the floor set has {len(floor)} images but there are {n} generated images: FID depends on the "
            f"sample size, so the real-vs-real floor needs exactly {n} real images (disjoint from the reference)"
        )
    if floor.shape == reference.shape and torch.equal(floor, reference):
        raise ValueError("floor and reference are the same images: the floor needs two disjoint real sets")
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"got {n} images but {len(prompts)} prompts")
    if (probe is None) != (attributes is None):
        raise ValueError("adherence needs both probe= and attributes= (e.g. [parse_caption(p) for p in prompts])")
    if contrastive is not None and prompts is None:
        raise ValueError("the contrastive scores need the prompts (prompts=...)")

    real = _features(features, reference, batch_size, progress)
    fake = _features(features, images, batch_size, progress)
    floor_feats = _features(features, floor, batch_size, progress)
    out = _feature_scores(real, fake)
    floor_scores = _feature_scores(real, floor_feats)
    out.update({"fid_floor": floor_scores["fid"], "kid_floor": floor_scores["kid_mean"],
                "precision_floor": floor_scores["precision"], "recall_floor": floor_scores["recall"]})  # fmt: skip
    if probe is not None:
        if len(attributes) != n:
            raise ValueError(f"got {n} images but {len(attributes)} attribute lists")
        out.update({f"adherence_{k}": v for k, v in probe.score(images, attributes, batch_size=batch_size).items()})
    if contrastive is not None:
        out["clip_score"] = contrastive.clip_score(images, prompts, batch_size=batch_size)
        out["r_precision"] = contrastive.r_precision(images, prompts, candidates=min(R_PRECISION_CANDIDATES, n))
    out["num_images"] = n
    return out


def generate(pipeline, prompts: list[str], sampling: SamplingConfig | None = None, batch_size: int = 64,
             progress: bool = True) -> tuple[torch.Tensor, float]:
    """One image per prompt, ``batch_size`` prompts per ``pipeline`` call; (images, seconds spent).

    The chunk starting at prompt ``s`` is sampled with ``sampling.for_chunk(s)`` (seed + s), the
    pipeline's own rule, so the images are those one ``pipeline(prompts, sampling, batch_size)`` call
    would give.
    """
    sampling = sampling if sampling is not None else SamplingConfig(seed=0)
    images, seconds = [], 0.0
    with tqdm(total=len(prompts), unit="img", desc="generating", disable=not progress) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            t0 = time.perf_counter()
            x = pipeline(chunk, sampling.for_chunk(start), batch_size=len(chunk))
            seconds += time.perf_counter() - t0
            if x.ndim != 4 or len(x) != len(chunk):
                raise ValueError(f"the pipeline returned {tuple(x.shape)} for {len(chunk)} prompts; expected [B, 3, H, W]")
            images.append(x.float().cpu())
            bar.update(len(chunk))
    return torch.cat(images), seconds


@dataclass
class Benchmark:
    """The real side of a generation evaluation: prompts, the reference and floor sets (images
    [N, 3, H, W], or their features [N, dim] once ``precompute`` ran), the feature network, and the
    adherence scorer: the shapes probe with each prompt's ``attributes``, or a contrastive model."""

    prompts: list[str]
    reference: torch.Tensor
    floor: torch.Tensor
    features: FeatureExtractor | None
    attributes: list | None = None
    probe: Any = None
    contrastive: Any = None

    def precompute(self, batch_size: int = 64) -> "Benchmark":
        """Extract the real sets' features once (for several evaluations on the same benchmark)."""
        if self.features is None or self.reference.ndim == 2:
            return self
        return dataclasses.replace(self, reference=extract(self.features, self.reference, batch_size=batch_size),
                                   floor=extract(self.features, self.floor, batch_size=batch_size))


def benchmark(data: str, n: int, size: int, seed: int = 0, features: str = "auto", cache_dir: str | Path = "runs/eval",
              probe_dir: str | Path | None = None, probe_steps: int | None = None, split: str = "test",
              probe_data: Any = None) -> Benchmark:
    """The generation-evaluation protocol, shared by ``trilemma eval generation`` and the demo.

    The reference is the first ``n`` held-out items; the floor is ``n`` other real images (shapes:
    the val split; a folder: its training images, as val and test coincide), and the prompts are the
    floor images' captions. Generated and floor sets then answer the same prompts, so a perfect
    generator scores the floor: prompts taken from the reference would pair each generated image
    with its reference twin and push FID below the floor. Adherence: on shapes the probe (the run
    ``probe_dir``, default ``cache_dir/probe``; also the ``auto`` / ``domain`` features); on a
    folder a contrastive text-image model trained on its train split (the run
    ``cache_dir/contrastive-KEY``, one per folder and size).
    ``split`` is the reference's (``test`` by default); the floor comes from another split, or, with
    ``all`` (a folder kept for testing), the folder is halved: even images the reference, odd the floor.
    ``probe_data``: shapes training items for a probe trained here (default: fresh draws).
    """
    check_split(data, split)
    cache_dir = Path(cache_dir)
    probe_dir = Path(probe_dir) if probe_dir is not None else cache_dir / "probe"
    shapes = data == "shapes"
    if split == "all":
        images, every = load_images(data, 2 * n, size, seed=seed, split="all")
        half = len(images) // 2
        reference, floor, items = images[0 : 2 * half : 2], images[1 : 2 * half : 2], every[1 : 2 * half : 2]
        print(f"notice: split='all': {half} of the folder's images are the reference and {half} others the floor")
    else:
        other = ("val" if split != "val" else "train") if shapes else ("train" if split != "train" else "val")
        reference, _ = load_images(data, n, size, seed=seed, split=split)
        floor, items = load_images(data, n, size, seed=seed, split=other)
    prompts = [it["caption"] for it in items]
    if shapes:
        probe = shapes_probe(probe_dir, size=size, seed=seed, dataset=probe_data,
                             **({} if probe_steps is None else {"steps": probe_steps}))
        choice = (features or "none").lower()
        extractor = probe.features if choice in ("auto", "domain") else resolve_features(choice, data, size, seed)
        return Benchmark(prompts, reference, floor, extractor, [it["attributes"] for it in items], probe=probe)
    extractor = resolve_features(features, data, size, seed, probe_dir)
    train = load_dataset(data, split="train", size=size, seed=seed)
    key = hashlib.sha256(repr(train).encode()).hexdigest()[:12]  # one scorer per folder and size
    contrastive = contrastive_scorer(cache_dir / f"contrastive-{key}", train, seed=seed)
    return Benchmark(prompts, reference, floor, extractor, contrastive=contrastive)


def evaluate_generation(pipeline, bench: Benchmark, sampling: SamplingConfig | None = None, batch_size: int = 64,
                        progress: bool = True) -> dict:
    """Generate one image per ``bench.prompts`` with ``pipeline(prompts_chunk, sampling)`` and score them.

    Returns ``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall`` (generated vs
    ``bench.reference`` in ``bench.features``), their real-vs-real floors ``fid_floor``,
    ``kid_floor``, ``precision_floor``, ``recall_floor`` (``bench.floor`` vs the reference; the floor
    holds one real image per prompt, disjoint from the reference, and the prompts are its captions,
    so that a perfect generator scores the floor), ``adherence_*`` (``shape_acc``, ``color_acc``,
    ``size_acc``, ``position_acc``, ``object_acc``, ``image_acc``) with a probe, ``clip_score`` and
    ``r_precision`` with a contrastive model, ``samples_per_s`` (pipeline calls only) and
    ``num_images``.
    """
    if len(bench.floor) != len(bench.prompts):  # fail before spending minutes on sampling
        raise ValueError(
            f"the floor set has {len(bench.floor)} images but there are {len(bench.prompts)} prompts: the real-vs-real "
            f"floor needs exactly one real image per generated one ({len(bench.prompts)}), disjoint from the reference"
        )
    if (bench.probe is None) != (bench.attributes is None):
        raise ValueError("adherence needs both probe= and attributes= (e.g. [parse_caption(p) for p in prompts])")
    images, seconds = generate(pipeline, bench.prompts, sampling, batch_size, progress)
    out = score_generated(images, bench.reference, bench.floor, bench.features, prompts=bench.prompts,
                          attributes=bench.attributes, probe=bench.probe, contrastive=bench.contrastive,
                          batch_size=batch_size, progress=progress)  # fmt: skip
    out["samples_per_s"] = len(images) / seconds if seconds > 0 else float("inf")
    return out
