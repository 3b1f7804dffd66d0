"""The promptable tokenizer's region study: what a prompt (boxes, or foreground points) buys inside
the region it asks for and costs outside it, with the controls that say where the gain comes from,
at equal total bits.

The tokenizer takes the prompt twice: the encoder reads it (prompt tokens, dense "inside" and point
marks, a box's RoIAlign crop) and the decoder reads it from ``Tokens.prompt`` (the same). So the
study decodes four conditions per budget ``k`` from two encodings, one without the prompt and one
with it:

    neither   plain ids, decoded with the plain encoding's prompt (the empty one ``encode`` attaches)
    encoder   prompted ids, decoded with that empty prompt: what the prompt made the encoder write
    decoder   plain ids, decoded with the prompted encoding's prompt: side information alone
    both      prompted ids, decoded with their own prompt (``decode(encode(images, prompt))``)

The region is the boxes, or a disc of ``POINT_RADIUS`` around each point (``region_mask``: a point
means "around here"). A decoder that sees the prompt was sent it: its bits count (``box_bits``,
``point_bits``: coordinates on a grid of ``1/levels``, the prompt quantized to it before the
tokenizer sees it). Each prompted condition is then compared with the unprompted tokenizer given
the same total bits in tokens (``unprompted_at_bits``). Boxes: the grid cell of a shapes image's
first object (``first_object_boxes``, shapes places objects in a 3x3 grid), or boxes drawn without
looking at the image (``random_boxes``), which say whether a gain needs the box to sit on an
object; points likewise (``random_points``). Shared by the demo (k <= K/4),
``trilemma eval reconstruction --region`` (``studies/region.py``) and ``bench/bench_promptable.py``.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from trilemma.data import POSITIONS
from trilemma.metrics.scores import psnr
from trilemma.tokenizers.prompts import POINT_RADIUS, region_mask
from trilemma.tokens import Prompt, Tokens

# condition -> (the encoder sees the prompt, the decoder sees it)
CONDITIONS = {"neither": (False, False), "encoder": (True, False), "decoder": (False, True), "both": (True, True)}
PROMPTED = ("encoder", "decoder", "both")
BOX_LEVELS = 256  # prompt coordinates are stated as multiples of 1/256: ~30 bits a box, ~16 a point
POINT_MARGIN = 0.1  # random points keep this far from the border: most of their disc lies in the image


@torch.no_grad()
def reconstruct(tok, images: torch.Tensor, prompt: Prompt | None, batch: int = 250) -> torch.Tensor:
    """``decode(encode(images, prompt))`` in chunks of ``batch`` images (a prompt without boxes: the
    region study passes its boxes through ``region_study``)."""
    if prompt is not None and (prompt.boxes is not None or prompt.points is not None):
        raise ValueError("`prompt` may carry a budget only; boxes and points go through region_study")
    parts = []
    for start in range(0, len(images), batch):
        parts.append(tok.decode(tok.encode(images[start : start + batch], prompt)).clamp(-1, 1))
    return torch.cat(parts)


def first_object_boxes(items: list[dict]) -> torch.Tensor:
    """[N, 1, 4] boxes: the 3x3 grid cell of each shapes item's first object."""
    cells = [POSITIONS.index(it["attributes"][0]["position"]) for it in items]
    return torch.tensor([[[c % 3 / 3, c // 3 / 3, (c % 3 + 1) / 3, (c // 3 + 1) / 3]] for c in cells])


def random_boxes(n: int, seed: int = 0, sizes: tuple[float, float] = (0.2, 0.5), count: int = 1) -> torch.Tensor:
    """[n, count, 4] boxes drawn without looking at any image (``count`` draws an image, one
    prompt): width and height each uniform in ``sizes`` (so random aspect), then a uniform position
    inside the image. The default sizes are the training boxes' (``random_prompt``), so only the
    placement differs from what training saw."""
    lo, hi = sizes
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"`sizes` must be (lo, hi) with 0 < lo <= hi <= 1, got {sizes!r}")
    _check_count(count)
    g = torch.Generator().manual_seed(seed)
    size = lo + (hi - lo) * torch.rand(n, count, 2, generator=g)
    corner = torch.rand(n, count, 2, generator=g) * (1 - size)
    return torch.cat([corner, corner + size], -1)


def random_points(n: int, seed: int = 0, margin: float = POINT_MARGIN, count: int = 1) -> torch.Tensor:
    """[n, count, 2] foreground points (x, y) drawn without looking at any image (``count`` an image):
    uniform in ``[margin, 1 - margin]`` per axis, so most of each point's disc (``POINT_RADIUS``) lies inside."""
    if not 0 <= margin < 0.5:
        raise ValueError(f"`margin` must be in [0, 0.5), got {margin!r}")
    _check_count(count)
    g = torch.Generator().manual_seed(seed)
    return margin + (1 - 2 * margin) * torch.rand(n, count, 2, generator=g)


def _check_count(count: int) -> None:
    if not (isinstance(count, int) and count >= 1):
        raise ValueError(f"`count` must be an integer >= 1, got {count!r}")


def quantize_boxes(boxes: torch.Tensor, levels: int = BOX_LEVELS) -> torch.Tensor:
    """``boxes`` rounded to multiples of ``1 / levels`` (rounding keeps x0 <= x1 and y0 <= y1)."""
    return (boxes * levels).round() / levels


def quantize_points(points: torch.Tensor, levels: int = BOX_LEVELS) -> torch.Tensor:
    """``points`` rounded to multiples of ``1 / levels``: the grid ``point_bits`` counts."""
    return (points * levels).round() / levels


def box_bits(boxes_per_image: int, levels: int = BOX_LEVELS) -> float:
    """Bits to state ``boxes_per_image`` boxes with coordinates on a grid of ``1 / levels``: a box is
    one of ``((levels + 1)(levels + 2) / 2)^2`` (x0 <= x1 and y0 <= y1 among levels + 1 values per
    axis), a uniform code over them: 30.0 bits at 256 levels (four free bytes would be 32)."""
    if levels < 1:
        raise ValueError(f"`levels` must be at least 1, got {levels!r}")
    return boxes_per_image * 2 * math.log2((levels + 1) * (levels + 2) / 2)


def point_bits(points_per_image: int, levels: int = BOX_LEVELS) -> float:
    """Bits to state ``points_per_image`` foreground points on a grid of ``1 / levels``: one of
    ``levels + 1`` values per axis, a uniform code: 16.0 bits a point at 256 levels."""
    if levels < 1:
        raise ValueError(f"`levels` must be at least 1, got {levels!r}")
    return points_per_image * 2 * math.log2(levels + 1)


def unprompted_at_bits(curve: dict[int, float], bits_per_token: float, bits: float) -> float | None:
    """The unprompted PSNR at ``bits`` total bits from ``curve`` (budget -> PSNR): linear in log bits
    between the nearest measured budgets below and above ``bits / bits_per_token``, the value itself
    when that is a measured budget, None past the largest (no budget spends that many bits)."""
    k = bits / bits_per_token
    below = [b for b in curve if b <= k + 1e-9]
    above = [b for b in curve if b >= k - 1e-9]
    if not above or not below:
        return None
    lo, hi = max(below), min(above)
    if lo == hi:
        return curve[lo]
    t = (math.log(k) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return curve[lo] + t * (curve[hi] - curve[lo])


def _rows(t: torch.Tensor | None, start: int, batch: int) -> torch.Tensor | None:
    """Images ``start`` .. ``start + batch`` of a per-image prompt tensor (one given for all: itself)."""
    return t if t is None or len(t) == 1 else t[start : start + batch]


@torch.no_grad()
def _encode(tok, images: torch.Tensor, prompt: Prompt, batch: int) -> Tokens:
    """All K tokens of ``images`` with ``prompt`` (boxes and points, or none), in chunks."""
    parts = []
    for start in range(0, len(images), batch):
        chunk = Prompt(boxes=_rows(prompt.boxes, start, batch), points=_rows(prompt.points, start, batch))
        parts.append(tok.encode(images[start : start + batch], chunk))
    return Tokens.cat(parts)


@torch.no_grad()
def _decode(tok, ids_from: Tokens, prompt_from: Tokens, k: int, batch: int) -> torch.Tensor:
    """The first ``k`` of ``ids_from``'s tokens decoded with ``prompt_from``'s prompt (budget k)."""
    tokens = Tokens(ids=ids_from.ids[:, :k], prompt=dataclasses.replace(prompt_from.prompt, budget=k))
    return torch.cat([tok.decode(tokens[s : s + batch]).clamp(-1, 1) for s in range(0, len(tokens), batch)])


def _study_prompt(images: torch.Tensor, boxes: torch.Tensor | None, points: torch.Tensor | None,
                  levels: int) -> tuple[Prompt, float]:
    """The prompt the study sends (quantized to ``1 / levels``) and its bits."""
    if boxes is None and points is None:
        raise ValueError("region_study needs `boxes` or `points`")
    for name, t, width in (("boxes", boxes, 4), ("points", points, 2)):
        if t is not None and (t.ndim != 3 or t.shape[0] not in (1, len(images)) or t.shape[2] != width):
            raise ValueError(f"`{name}` must be [N or 1, P, {width}] for {len(images)} images, got {tuple(t.shape)}")
    device = images.device
    prompt = Prompt(boxes=None if boxes is None else quantize_boxes(boxes.to(device), levels),
                    points=None if points is None else quantize_points(points.to(device), levels))
    bits = ((0.0 if boxes is None else box_bits(boxes.shape[1], levels))
            + (0.0 if points is None else point_bits(points.shape[1], levels)))
    return prompt, bits


def region_study(tok, images: torch.Tensor, boxes: torch.Tensor | None = None, budgets: list[int] | None = None, *,
                 points: torch.Tensor | None = None, levels: int = BOX_LEVELS, batch: int = 250) -> list[dict]:
    """One row per budget ``k``, means over images in dB. The region is the prompt's: its boxes,
    or a disc of ``POINT_RADIUS`` around each of its foreground points, or both together; the keys
    keep the box study's names, "box" standing for that region (the caller knows which it sent):

    - ``psnr``: the whole image, unprompted;
    - ``psnr_in_box_{c}`` / ``psnr_outside_{c}``: inside / outside the region, for each condition
      ``c`` of ``CONDITIONS``;
    - ``bits_tokens`` (k x bits per token), ``bits_box`` (the prompt's: ``box_bits`` plus
      ``point_bits``) and ``bits_total_{c}`` (tokens, plus the prompt where the decoder sees it);
    - for each prompted condition ``c``, ``psnr_in_box_neither_at_bits_{c}`` and
      ``psnr_outside_neither_at_bits_{c}``: the unprompted tokenizer at ``bits_total_{c}``
      (``unprompted_at_bits``; the two budgets around it are measured for that), None beyond K.

    ``boxes`` [N or 1, P, 4] and ``points`` [N or 1, P, 2] (foreground) are quantized to
    ``1 / levels`` first: what the tokenizer sees and the region measured are the prompt the bits
    state. The tokens must be ordered (``spec.ordered``): one encoding per side, its prefixes decoded."""
    if not getattr(tok, "promptable", False) or not tok.spec.ordered:
        raise ValueError(f"region_study needs a promptable tokenizer with ordered tokens, got {type(tok).__name__}")
    k_max, per_token = tok.spec.max_tokens, tok.spec.bits_per_token
    if not budgets or any(not 1 <= k <= k_max for k in budgets):
        raise ValueError(f"`budgets` must be non-empty, each in [1, {k_max}], got {budgets!r}")
    prompt, bits_prompt = _study_prompt(images, boxes, points, levels)
    inside = region_mask(prompt, len(images), images.shape[-1], images.device, POINT_RADIUS)
    encoded = {False: _encode(tok, images, Prompt(), batch), True: _encode(tok, images, prompt, batch)}

    def measure(condition: str, k: int) -> dict[str, float]:
        enc, dec = CONDITIONS[condition]
        recon = _decode(tok, encoded[enc], encoded[dec], k, batch)
        return {"whole": psnr(recon, images).mean().item(), "in": psnr(recon, images, mask=inside).mean().item(),
                "out": psnr(recon, images, mask=1 - inside).mean().item()}

    def total(condition: str, k: int) -> float:
        return k * per_token + (bits_prompt if CONDITIONS[condition][1] else 0.0)

    # The unprompted curve at the asked budgets and at the two around each prompted total.
    around = {b for k in budgets for c in PROMPTED for b in (math.floor(total(c, k) / per_token + 1e-9),
                                                             math.ceil(total(c, k) / per_token - 1e-9))}
    neither = {k: measure("neither", k) for k in sorted(set(budgets) | {b for b in around if b <= k_max})}
    rows = []
    for k in budgets:
        scores = {"neither": neither[k], **{c: measure(c, k) for c in PROMPTED}}
        row = {"k": k, "psnr": neither[k]["whole"], "bits_tokens": k * per_token, "bits_box": bits_prompt}
        for c, s in scores.items():
            row |= {f"psnr_in_box_{c}": s["in"], f"psnr_outside_{c}": s["out"], f"bits_total_{c}": total(c, k)}
        for c in PROMPTED:
            for key, part in (("in_box", "in"), ("outside", "out")):
                curve = {b: s[part] for b, s in neither.items()}
                row[f"psnr_{key}_neither_at_bits_{c}"] = unprompted_at_bits(curve, per_token, total(c, k))
        rows.append(row)
    return rows
