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
  (``trilemma.metrics.contrastive``) gives CLIPScore and R-precision. Beside each, its ceiling:
  the scorer on real images of the same prompts.
- Categories (``benchmark.py``): on shapes, prompts whose compositions no training image shows
  (the headline), prompts with held-out colour x shape pairs, and training prompts (memorisation),
  each with its own reference and floor; the protocol states each set and its measured overlap
  with the train split.
- Throughput: generated images per second (tokens -> images included).

``score_generated`` does everything after sampling, so it can score any image set (e.g. real
test images "as if generated": FID near the floor, adherence near 1).
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from trilemma.generators.sampling import SamplingConfig
from trilemma.studies.captioning import round_trip
from trilemma.metrics import scores
from trilemma.metrics.features import FeatureExtractor, extract
from trilemma.studies.benchmark import HEADLINE, Benchmark, Category, adherence_scores, benchmark, category_splits

__all__ = ["HEADLINE", "Benchmark", "Category", "benchmark", "category_splits", "evaluate_generation", "generate",
           "score_generated"]


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
    features: FeatureExtractor | None,
    prompts: list[str] | None = None,
    attributes: list | None = None,
    probe=None,
    contrastive=None,
    novel_pairs: list[list[str]] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict:
    """Score generated ``images`` [N, 3, H, W] (one per prompt); see ``evaluate_generation``.

    ``reference`` and ``floor`` are two disjoint sets of real images (or their precomputed
    features [M, dim]); ``floor`` must hold exactly N images so that the floor is measured at the
    generated set's size. ``features=None`` scores adherence only (no FID, KID, precision, recall). ``prompts`` are needed for the contrastive scores, ``attributes`` (the
    prompted objects, e.g. ``parse_caption(prompt)``) for the probe's; ``novel_pairs`` (per image,
    the held-out pairs it was prompted with) add the probe's ``by_novel_pair`` breakdown.
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

    out = {}
    if features is not None:  # without a feature network: adherence only
        real = _features(features, reference, batch_size, progress)
        fake = _features(features, images, batch_size, progress)
        floor_feats = _features(features, floor, batch_size, progress)
        out = _feature_scores(real, fake)
        floor_scores = _feature_scores(real, floor_feats)
        out.update({"fid_floor": floor_scores["fid"], "kid_floor": floor_scores["kid_mean"],
                    "precision_floor": floor_scores["precision"], "recall_floor": floor_scores["recall"]})  # fmt: skip
    if probe is not None and len(attributes) != n:
        raise ValueError(f"got {n} images but {len(attributes)} attribute lists")
    out.update(adherence_scores(images, Category(prompts or [], reference, floor, attributes, novel_pairs),
                                probe, contrastive, batch_size))
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


def evaluate_generation(pipeline, bench: Benchmark, sampling: SamplingConfig | None = None, batch_size: int = 64,
                        progress: bool = True) -> dict:
    """Generate one image per prompt of every category of ``bench`` with ``pipeline(prompts_chunk,
    sampling)`` (each category from the same seed) and score them.

    Per category (``categories[name]``): ``fid``, ``kid_mean``, ``kid_std``, ``precision``,
    ``recall`` (generated vs the category's reference in ``bench.features``), their real-vs-real
    floors ``fid_floor``, ``kid_floor``, ``precision_floor``, ``recall_floor`` (its floor vs the
    reference; the floor holds one real image per prompt, disjoint from the reference, and the
    prompts are its captions, so that a perfect generator scores the floor), ``adherence_*``
    (``shape_acc``, ``color_acc``, ``size_acc``, ``position_acc``, ``object_acc``, ``image_acc``)
    with a probe, ``clip_score`` and ``r_precision`` with a contrastive model, each beside its
    ceiling ``NAME_ceiling`` (the scorer on the floor's real images), ``by_novel_pair`` where the
    prompts show held-out pairs (``benchmark.adherence_scores``; each score beside its ceiling),
    ``samples_per_s`` (pipeline calls only) and ``num_images``; with a generator that reads images
    (a dalle trained in both orders) on shapes, ``round_trip_*``: its own captions of the generated
    images scored against the prompts (``studies.captioning.round_trip``).

    Returns the headline category's scores, with ``samples_per_s`` over every image generated,
    ``categories`` (every category's, the headline's included) and ``protocol`` (``bench.protocol``
    and the sampling seed).
    """
    for name, cat in bench.categories.items():  # fail before spending minutes on sampling
        if len(cat.floor) != len(cat.prompts):
            raise ValueError(
                f"the {name} floor set has {len(cat.floor)} images but there are {len(cat.prompts)} prompts: the "
                f"real-vs-real floor needs exactly one real image per generated one ({len(cat.prompts)}), disjoint "
                "from the reference"
            )
        if (bench.probe is None) != (cat.attributes is None):
            raise ValueError("adherence needs both probe= and attributes= (e.g. [parse_caption(p) for p in prompts])")
    sampling = sampling if sampling is not None else SamplingConfig(seed=0)
    bench = bench.with_ceilings(batch_size)
    results, count, seconds = {}, 0, 0.0
    for name, cat in bench.categories.items():
        if progress and len(bench.categories) > 1:
            print(f"{name}: {len(cat.prompts)} prompts")
        images, spent = generate(pipeline, cat.prompts, sampling, batch_size, progress)
        out = score_generated(images, cat.reference, cat.floor, bench.features, prompts=cat.prompts,
                              attributes=cat.attributes, probe=bench.probe, contrastive=bench.contrastive,
                              novel_pairs=cat.novel_pairs, batch_size=batch_size, progress=progress)  # fmt: skip
        out["samples_per_s"] = len(images) / spent if spent > 0 else float("inf")
        if cat.attributes is not None and reads_images(pipeline):  # a second adherence measure, no probe in it
            out.update(round_trip(pipeline, images, cat.attributes, batch_size))
        results[name] = _with_ceiling(out, cat.ceiling or {})
        count, seconds = count + len(images), seconds + spent
    return {**results[bench.headline], "samples_per_s": count / seconds if seconds > 0 else float("inf"),
            "categories": results, "protocol": {**bench.protocol, "sampling_seed": sampling.seed}}


def reads_images(pipeline) -> bool:
    """Whether a pipeline's generator also captions (a decoder-only model trained in both orders)."""
    generator = getattr(pipeline, "generator", None)
    return getattr(getattr(generator, "config", None), "caption_share", 0) > 0


def _with_ceiling(scores_: dict, ceiling: dict) -> dict:
    """Each adherence score followed by its ceiling ``NAME_ceiling``; ``by_novel_pair`` alike."""
    out = {}
    for key, value in scores_.items():
        if key == "by_novel_pair":
            value = {pair: _with_ceiling(v, ceiling.get(key, {}).get(pair, {})) for pair, v in value.items()}
        out[key] = value
        if key in ceiling and key not in ("by_novel_pair", "images"):
            out[f"{key}_ceiling"] = ceiling[key]
    return out
