"""The promptable tokenizer's region study (``metrics.prompted.region_study``) on a study's held-out
images, shapes or any folder: prompts drawn without looking at the images (random boxes of the
sizes the tokenizer trained on, random foreground points), seeded by the study's seed, and on shapes
also a box on each image's first object. ``trilemma eval reconstruction --region`` prints the tables
(``region_lines``) and saves the report (``region_report``) beside the metrics."""

from __future__ import annotations

import torch

from trilemma.metrics.prompted import (
    BOX_LEVELS,
    POINT_MARGIN,
    box_bits,
    first_object_boxes,
    point_bits,
    random_boxes,
    random_points,
    region_study,
)
from trilemma.tokenizers.prompts import POINT_RADIUS

REGION_CHOICES = ("boxes", "points", "both")


def check_region(region: str | None) -> None:
    """``region`` is None (no study) or one of ``REGION_CHOICES``."""
    if region is not None and region not in REGION_CHOICES:
        raise ValueError(f"`region` must be one of {', '.join(REGION_CHOICES)}, got {region!r}")


def region_report(tok, images: torch.Tensor, items: list[dict], region: str, budgets: list[int], data: str,
                  split: str, seed: int, batch: int = 250) -> dict:
    """The region study of ``tok`` on ``images`` (their ``items``, for shapes' first objects) at
    ``budgets``: ``{"protocol": ..., "tables": {name: table}}``, a table per kind of prompt, each
    with what its prompts are (``prompt``: boxes or points; their placement, size or disc, bits a
    prompt) and ``rows``, one per budget (``region_study``'s keys: "box" is the prompted region)."""
    check_region(region)
    n, prompts = len(images), []  # (table name, what its prompts are, region_study's prompt argument)
    if region in ("boxes", "both"):
        sides = tuple(float(s) for s in tok.config.box_sides)  # the sizes its training boxes had
        prompts.append(("random boxes", _boxes(f"uniform in the image, drawn without looking at it (seed {seed})", sides),
                        {"boxes": random_boxes(n, seed, sides)}))
        if data == "shapes":
            prompts.append(("first-object boxes", _boxes("the 3x3 grid cell of each image's first object", (1 / 3, 1 / 3)),
                            {"boxes": first_object_boxes(items)}))
    if region in ("points", "both"):
        about = {"prompt": "points", "placement": f"uniform in [{POINT_MARGIN:g}, {1 - POINT_MARGIN:g}] per axis, drawn "
                 f"without looking at the image (seed {seed})", "points_per_image": 1, "point_radius": POINT_RADIUS,
                 "bits_per_prompt": point_bits(1)}
        prompts.append(("random points", about, {"points": random_points(n, seed)}))
    tables = {name: {**about, "rows": region_study(tok, images, **prompt, budgets=budgets, batch=batch)}
              for name, about, prompt in prompts}
    protocol = {
        "data": str(data), "split": split, "images": n, "seed": seed, "budgets": list(budgets),
        "coordinates": f"on a grid of 1/{BOX_LEVELS} (the prompt is quantized to it before the tokenizer sees it)",
        "conditions": "the prompt told to neither half of the tokenizer, the encoder only, the decoder only, both",
        "region": f"the boxes, or a disc of radius {POINT_RADIUS:g} of the side around each point",
        "equal_bits": "the unprompted tokenizer at a condition's total bits (tokens, plus the prompt's bits where the "
                      "decoder reads it), interpolated in log bits between the budgets around it; none past K tokens",
    }
    return {"protocol": protocol, "tables": tables}


def _boxes(placement: str, sides: tuple[float, float]) -> dict:
    return {"prompt": "boxes", "placement": placement, "boxes_per_image": 1, "box_sides": list(sides),
            "bits_per_prompt": box_bits(1)}


def region_lines(report: dict) -> list[str]:
    """A compact table per kind of prompt: k, bits (tokens + the prompt's), PSNR in the region for
    each condition and for the unprompted tokenizer at both's bits, PSNR outside for neither / both."""
    about = report["protocol"]
    lines = [f"region study: {about['images']} {about['split']} images of {about['data']}, seed {about['seed']}, "
             f"PSNR in dB; prompt to neither / encoder / decoder / both; 'same bits': unprompted at both's bits"]
    header = ["k", "bits", "in: neither", "encoder", "decoder", "both", "same bits", "out: neither", "both"]
    for name, table in report["tables"].items():
        if table["prompt"] == "boxes":
            size = "sides " + "-".join(dict.fromkeys(f"{side:.2g}" for side in table["box_sides"]))
        else:
            size = f"disc of radius {table['point_radius']:g}"
        lines.append(f"{name} ({size}, {table['bits_per_prompt']:.1f} bits a prompt):")
        cells = [header] + [[str(r["k"]), f"{r['bits_tokens']:.0f} + {r['bits_box']:.0f}",
                             *(_db(r[f"psnr_in_box_{c}"]) for c in ("neither", "encoder", "decoder", "both")),
                             _db(r["psnr_in_box_neither_at_bits_both"]), _db(r["psnr_outside_neither"]),
                             _db(r["psnr_outside_both"])] for r in table["rows"]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return lines


def _db(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"
