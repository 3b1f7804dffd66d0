"""The promptable tokenizer's region study: what a box prompt buys inside the box and costs outside
it, with the controls that say where the gain comes from, at equal total bits.

The tokenizer takes the box twice: the encoder reads it (prompt tokens, dense "inside" marks, the
box's RoIAlign crop) and the decoder reads it from ``Tokens.prompt`` (the same three). So the study
decodes four conditions per budget ``k`` from two encodings, one without the box and one with it:

    neither   plain ids, decoded with the plain encoding's prompt (the empty one ``encode`` attaches)
    encoder   boxed ids, decoded with that empty prompt: what the box made the encoder write
    decoder   plain ids, decoded with the boxed encoding's prompt: side information alone
    both      boxed ids, decoded with their own prompt (``decode(encode(images, box))``)

A decoder that sees the box was sent the box: its bits count (``box_bits``: coordinates on a grid
of ``1/levels``, the boxes quantized to it before the tokenizer sees them). Each prompted condition
is then compared with the unprompted tokenizer given the same total bits in tokens
(``unprompted_at_bits``). Boxes: the grid cell of a shapes image's first object
(``first_object_boxes``, shapes places objects in a 3x3 grid), or boxes drawn without looking at
the image (``random_boxes``), which say whether a gain needs the box to sit on an object. Shared by
the demo (k <= K/4) and ``bench/bench_promptable.py`` (every k).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from trilemma.data import POSITIONS
from trilemma.metrics.scores import psnr
from trilemma.tokenizers.prompts import box_mask
from trilemma.tokens import Prompt, Tokens

# condition -> (the encoder sees the box, the decoder sees it)
CONDITIONS = {"neither": (False, False), "encoder": (True, False), "decoder": (False, True), "both": (True, True)}
PROMPTED = ("encoder", "decoder", "both")
BOX_LEVELS = 256  # box coordinates are stated as multiples of 1/256: ~30 bits a box


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


def random_boxes(n: int, seed: int = 0, sizes: tuple[float, float] = (0.2, 0.5)) -> torch.Tensor:
    """[n, 1, 4] boxes drawn without looking at any image: width and height each uniform in
    ``sizes`` (so random aspect), then a uniform position inside the image. The default sizes are
    the training boxes' (``random_prompt``), so only the placement differs from what training saw."""
    lo, hi = sizes
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"`sizes` must be (lo, hi) with 0 < lo <= hi <= 1, got {sizes!r}")
    g = torch.Generator().manual_seed(seed)
    size = lo + (hi - lo) * torch.rand(n, 2, generator=g)
    corner = torch.rand(n, 2, generator=g) * (1 - size)
    return torch.cat([corner, corner + size], -1)[:, None]


def quantize_boxes(boxes: torch.Tensor, levels: int = BOX_LEVELS) -> torch.Tensor:
    """``boxes`` rounded to multiples of ``1 / levels`` (rounding keeps x0 <= x1 and y0 <= y1)."""
    return (boxes * levels).round() / levels


def box_bits(boxes_per_image: int, levels: int = BOX_LEVELS) -> float:
    """Bits to state ``boxes_per_image`` boxes with coordinates on a grid of ``1 / levels``: a box is
    one of ``((levels + 1)(levels + 2) / 2)^2`` (x0 <= x1 and y0 <= y1 among levels + 1 values per
    axis), a uniform code over them: 30.0 bits at 256 levels (four free bytes would be 32)."""
    if levels < 1:
        raise ValueError(f"`levels` must be at least 1, got {levels!r}")
    return boxes_per_image * 2 * math.log2((levels + 1) * (levels + 2) / 2)


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


@torch.no_grad()
def _encode(tok, images: torch.Tensor, boxes: torch.Tensor | None, batch: int) -> Tokens:
    """All K tokens of ``images`` (with ``boxes`` as the prompt, or none), in chunks."""
    parts = []
    for start in range(0, len(images), batch):
        box = None if boxes is None else boxes[start : start + batch] if len(boxes) > 1 else boxes
        parts.append(tok.encode(images[start : start + batch], Prompt(boxes=box)))
    return Tokens.cat(parts)


@torch.no_grad()
def _decode(tok, ids_from: Tokens, prompt_from: Tokens, k: int, batch: int) -> torch.Tensor:
    """The first ``k`` of ``ids_from``'s tokens decoded with ``prompt_from``'s prompt (budget k)."""
    tokens = Tokens(ids=ids_from.ids[:, :k], prompt=dataclasses.replace(prompt_from.prompt, budget=k))
    return torch.cat([tok.decode(tokens[s : s + batch]).clamp(-1, 1) for s in range(0, len(tokens), batch)])


def region_study(tok, images: torch.Tensor, boxes: torch.Tensor, budgets: list[int], levels: int = BOX_LEVELS,
                 batch: int = 250) -> list[dict]:
    """One row per budget ``k``, means over images in dB:

    - ``psnr``: the whole image, unprompted;
    - ``psnr_in_box_{c}`` / ``psnr_outside_{c}`` for each condition ``c`` of ``CONDITIONS``;
    - ``bits_tokens`` (k x bits per token), ``bits_box`` (``box_bits``) and ``bits_total_{c}``
      (tokens, plus the box where the decoder sees it);
    - for each prompted condition ``c``, ``psnr_in_box_neither_at_bits_{c}`` and
      ``psnr_outside_neither_at_bits_{c}``: the unprompted tokenizer at ``bits_total_{c}``
      (``unprompted_at_bits``; the two budgets around it are measured for that), None beyond K.

    ``boxes`` [N or 1, P, 4] are quantized to ``1 / levels`` first: what the tokenizer sees and the
    region measured are the box the bits state. The tokens must be ordered (``spec.ordered``): one
    encoding per side, its prefixes decoded."""
    if not getattr(tok, "promptable", False) or not tok.spec.ordered:
        raise ValueError(f"region_study needs a promptable tokenizer with ordered tokens, got {type(tok).__name__}")
    k_max, per_token = tok.spec.max_tokens, tok.spec.bits_per_token
    if not budgets or any(not 1 <= k <= k_max for k in budgets):
        raise ValueError(f"`budgets` must be non-empty, each in [1, {k_max}], got {budgets!r}")
    boxes = quantize_boxes(boxes.to(images.device), levels)
    bits_box = box_bits(boxes.shape[1], levels)
    inside = box_mask(Prompt(boxes=boxes), len(images), images.shape[-1], images.device)
    encoded = {False: _encode(tok, images, None, batch), True: _encode(tok, images, boxes, batch)}

    def measure(condition: str, k: int) -> dict[str, float]:
        enc, dec = CONDITIONS[condition]
        recon = _decode(tok, encoded[enc], encoded[dec], k, batch)
        return {"whole": psnr(recon, images).mean().item(), "in": psnr(recon, images, mask=inside).mean().item(),
                "out": psnr(recon, images, mask=1 - inside).mean().item()}

    def total(condition: str, k: int) -> float:
        return k * per_token + (bits_box if CONDITIONS[condition][1] else 0.0)

    # The unprompted curve at the asked budgets and at the two around each prompted total.
    around = {b for k in budgets for c in PROMPTED for b in (math.floor(total(c, k) / per_token + 1e-9),
                                                             math.ceil(total(c, k) / per_token - 1e-9))}
    neither = {k: measure("neither", k) for k in sorted(set(budgets) | {b for b in around if b <= k_max})}
    rows = []
    for k in budgets:
        scores = {"neither": neither[k], **{c: measure(c, k) for c in PROMPTED}}
        row = {"k": k, "psnr": neither[k]["whole"], "bits_tokens": k * per_token, "bits_box": bits_box}
        for c, s in scores.items():
            row |= {f"psnr_in_box_{c}": s["in"], f"psnr_outside_{c}": s["out"], f"bits_total_{c}": total(c, k)}
        for c in PROMPTED:
            for key, part in (("in_box", "in"), ("outside", "out")):
                curve = {b: s[part] for b, s in neither.items()}
                row[f"psnr_{key}_neither_at_bits_{c}"] = unprompted_at_bits(curve, per_token, total(c, k))
        rows.append(row)
    return rows
