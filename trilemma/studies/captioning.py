"""Captioning evaluated: how well a generator that reads images (a decoder-only model trained in
both orders) says what is in them.

On shapes the caption is parsed back into objects (``data.shapes.parse_caption``) and compared with
the image's own: per attribute, per object and per caption, objects matched by position (a shapes
image has at most one object per cell, so the position names the object). The same scorer reads
the generation benchmark backwards, as a "round trip": caption a generated image and score the
caption against the prompt it was drawn for, a second adherence measure that does not use the probe.
On a folder there is no grammar: the contrastive text-image model (trained on the folder's train
split only) scores the caption against its image, beside the true caption's score, and the exact
match rate is counted.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from trilemma.data.shapes import parse_caption
from trilemma.data.text import words
from trilemma.generators.sampling import SamplingConfig
from trilemma.studies.images import load_images

ATTRIBUTES = ("shape", "color", "size", "position")


def score_shapes_captions(captions: list[str], truths: list[list[dict]]) -> dict[str, float]:
    """Exact scores of ``captions`` against each image's objects ``truths`` (shapes attributes):
    ``caption_<attribute>_acc`` over the true objects (a true object whose position no caption
    object names scores 0 on every attribute), ``caption_object_acc`` (all four right),
    ``caption_image_acc`` (every object right and none extra), ``caption_parsed`` (the share of
    captions that parse)."""
    if len(captions) != len(truths):
        raise ValueError(f"got {len(captions)} captions for {len(truths)} images")
    right = dict.fromkeys(ATTRIBUTES, 0)
    objects = objects_right = images_right = parsed = 0
    for text, truth in zip(captions, truths):
        try:
            said = {o["position"]: o for o in parse_caption(text)}
            parsed += 1
        except ValueError:
            said = {}
        all_right = len(said) == len(truth)
        for obj in truth:
            guess = said.get(obj["position"])
            hits = {a: guess is not None and guess[a] == obj[a] for a in ATTRIBUTES}
            for a in ATTRIBUTES:
                right[a] += hits[a]
            objects += 1
            objects_right += all(hits.values())
            all_right &= all(hits.values())
        images_right += all_right
    n = len(captions)
    return {**{f"caption_{a}_acc": right[a] / objects for a in ATTRIBUTES}, "caption_object_acc": objects_right / objects,
            "caption_image_acc": images_right / n, "caption_parsed": parsed / n}


def evaluate_captioning(pipe, data: str = "shapes", n: int = 500, size: int | None = None, seed: int = 0,
                        split: str = "test", sampling: SamplingConfig | None = None, batch_size: int = 64,
                        contrastive: Any = None, progress: bool = True) -> dict[str, Any]:
    """Caption the first ``n`` images of ``data``'s ``split`` with ``pipe`` (``Pipeline.caption``)
    and score them: on shapes ``score_shapes_captions`` against the images' objects; on a folder
    the ``contrastive`` model's CLIP score of the generated and of the true captions and the exact
    match rate (``caption_exact``: same words). Also ``captions_per_s`` and the ``protocol``."""
    size = size or pipe.tokenizer.image_size
    images, items = load_images(data, n, size, seed=seed, split=split, progress=progress)
    start = time.perf_counter()
    captions = pipe.caption(images, sampling, batch_size=batch_size)
    out: dict[str, Any] = {"captions_per_s": len(images) / (time.perf_counter() - start)}
    truths = [it["caption"] for it in items]
    if data == "shapes":
        out.update(score_shapes_captions(captions, [it["attributes"] for it in items]))
    else:
        if contrastive is None:
            raise ValueError("captioning a folder is scored by a contrastive model: give `contrastive`")
        out["clip_score"] = contrastive.clip_score(images, captions, batch_size=batch_size)
        out["clip_score_true"] = contrastive.clip_score(images, truths, batch_size=batch_size)
    out["caption_exact"] = sum(words(c) == words(t) for c, t in zip(captions, truths)) / len(captions)
    sampling = sampling or SamplingConfig(temperature=0)
    out["protocol"] = {"data": data, "split": split, "images": len(images), "seed": seed,
                       "decoding": "greedy" if sampling.temperature == 0 else f"temperature {sampling.temperature:g}",
                       "scorer": "the caption parsed and matched by position" if data == "shapes"
                       else "a contrastive model trained on the folder's train split"}
    out["examples"] = [{"caption": c, "true": t} for c, t in zip(captions[:8], truths[:8])]
    return out


@torch.no_grad()
def round_trip(pipe, images: torch.Tensor, truths: list[list[dict]], batch_size: int = 64) -> dict[str, float]:
    """Adherence read by captioning: caption generated ``images`` with ``pipe`` (greedy) and score
    the captions against the objects their prompts asked for (``truths``), as ``round_trip_*``."""
    scores = score_shapes_captions(pipe.caption(images, batch_size=batch_size), truths)
    return {k.replace("caption_", "round_trip_", 1): v for k, v in scores.items()}
