"""Prompts for the promptable tokenizer: checking them, encoding them (SAM's prompt encoder: random
Fourier features of box corners and points plus learned type embeddings, and a dense "inside a box"
/ point mark per grid position), the grid a box covers (``box_mask``) and the region a prompt asks
for (``region_mask``: its boxes and a disc of ``POINT_RADIUS`` around each foreground point: a point
means "around here"), and a box's content read and written at its own scale (``box_crops`` by
RoIAlign, ``paste_crops`` by bilinear sampling); for ``region_share``, the one region a prompt asks
for (``prompt_regions``), which of a budget's positions describe it (``region_positions``), and its
pixels cropped to the full size and pasted back (``crop_images``, ``paste_images``)."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from trilemma.tokens import Prompt

# Prompt slot types: two box corners, a foreground / background point, an unused slot.
CORNER_0, CORNER_1, POINT_FG, POINT_BG, EMPTY = range(5)
# The region a foreground point asks for: a disc of this radius (a fraction of the image side), in
# training's region weighting and in the region study alike.
POINT_RADIUS = 0.15

def check_prompt(prompt: Prompt | None, batch: int, max_tokens: int, max_boxes: int, max_points: int) -> None:
    """Refuse, in one line naming the problem, a prompt this tokenizer cannot take."""
    if prompt is None:
        return
    if prompt.budget is not None and not (isinstance(prompt.budget, int) and 1 <= prompt.budget <= max_tokens):
        raise ValueError(f"budget must be an integer in [1, {max_tokens}], got {prompt.budget!r}")
    for name, t, width, most in (("boxes", prompt.boxes, 4, max_boxes), ("points", prompt.points, 2, max_points)):
        if t is None:
            continue
        if t.ndim != 3 or t.shape[0] not in (1, batch) or t.shape[2] != width:
            raise ValueError(f"{name} must be [B, P, {width}] (or [1, P, {width}] for every image), got {tuple(t.shape)}")
        if t.shape[1] > most:
            raise ValueError(f"at most {most} {name} per image, got {t.shape[1]}")
        if not torch.isfinite(t).all() or (t < 0).any() or (t > 1).any():
            raise ValueError(f"{name} coordinates must be normalised to [0, 1], got {t.flatten().tolist()[:8]}")
    if prompt.boxes is not None and ((prompt.boxes[..., 0] > prompt.boxes[..., 2]) | (prompt.boxes[..., 1] > prompt.boxes[..., 3])).any():
        raise ValueError("a box is x0,y0,x1,y1 with x0 <= x1 and y0 <= y1")


class PromptEncoder(nn.Module):
    """Boxes and points -> a fixed number of prompt tokens [B, 2 * max_boxes + max_points, dim]."""

    def __init__(self, dim: int, bands: int, max_boxes: int, max_points: int):
        super().__init__()
        self.max_boxes, self.max_points = max_boxes, max_points
        self.register_buffer("freqs", torch.randn(2, bands))  # random Fourier features (SAM); saved
        self.proj = nn.Linear(2 * bands, dim)
        self.types = nn.Embedding(5, dim)
        self.inside = nn.Parameter(torch.randn(dim) * 0.02)  # dense: a position inside a box
        self.point_marks = nn.Embedding(2, dim)  # dense: a background / foreground point's position

    @property
    def slots(self) -> int:
        return 2 * self.max_boxes + self.max_points

    def forward(self, prompt: Prompt | None, batch: int, device: torch.device) -> torch.Tensor:
        xy = torch.zeros(batch, self.slots, 2, device=device)
        kinds = torch.full((batch, self.slots), EMPTY, dtype=torch.long, device=device)
        if prompt is not None and prompt.boxes is not None:
            boxes = prompt.boxes.to(device).float().expand(batch, -1, -1)
            n = boxes.shape[1]
            xy[:, : 2 * n] = rearrange(boxes, "b p (c two) -> b (p c) two", two=2).clamp(0, 1)
            corners = torch.tensor([CORNER_0, CORNER_1], device=device).repeat(n).expand(batch, -1)
            absent = (boxes < 0).any(-1).repeat_interleave(2, dim=1)  # a box of -1s: no box (training)
            kinds[:, : 2 * n] = torch.where(absent, EMPTY, corners)
        if prompt is not None and prompt.points is not None:
            points, foreground = _points(prompt, batch, device)
            n, start = points.shape[1], 2 * self.max_boxes
            xy[:, start : start + n] = points.clamp(0, 1)
            absent = (points < 0).any(-1)  # a point at -1s: no point (training)
            kinds[:, start : start + n] = torch.where(absent, EMPTY, torch.where(foreground, POINT_FG, POINT_BG)).long()
        angles = 2 * math.pi * (2 * xy - 1) @ self.freqs
        features = self.proj(torch.cat([angles.sin(), angles.cos()], -1))
        return torch.where((kinds == EMPTY)[..., None], 0.0, features) + self.types(kinds)

    def dense(self, prompt: Prompt | None, batch: int, side: int, device: torch.device) -> torch.Tensor:
        """Per grid position [B, side * side, dim]: a learned embedding where the position lies in a
        box, another where a foreground (background) point falls, else 0 (SAM adds its dense mask
        prompt to the image embedding the same way): "am I prompted" is read off each position,
        not worked out by attention from corner coordinates."""
        out = torch.zeros(batch, side * side, self.inside.shape[0], device=device)
        if prompt is None:
            return out
        inside = box_mask(prompt, batch, side, device)
        if inside is not None:
            out = out + rearrange(inside, "b 1 h w -> b (h w) 1") * self.inside
        if prompt.points is not None:
            points, foreground = _points(prompt, batch, device)
            cells = (points * side).long().clamp(0, side - 1)
            index = cells[..., 1] * side + cells[..., 0]  # [B, P]
            present = (points >= 0).all(-1)[..., None]
            marks = self.point_marks(foreground.long()) * present  # [B, P, dim]
            out = out.scatter_add(1, index[..., None].expand_as(marks), marks)
        return out


def _points(prompt: Prompt, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt's points [B, P, 2] for every image and whether each is foreground [B, P] (the
    default when no labels are given)."""
    points = prompt.points.to(device).float().expand(batch, -1, -1)
    if prompt.point_labels is None:
        return points, torch.ones(points.shape[:2], dtype=torch.bool, device=device)
    return points, prompt.point_labels.to(device).expand(batch, -1) > 0


def _boxes(prompt: Prompt | None, batch: int, device: torch.device) -> torch.Tensor | None:
    """The prompt's boxes [B, P, 4] for every image (rows of -1s stand for none), or None."""
    if prompt is None or prompt.boxes is None:
        return None
    return prompt.boxes.to(device).float().expand(batch, -1, -1)


def box_crops(grid: torch.Tensor, prompt: Prompt | None, side: int, cells: int) -> torch.Tensor:
    """[B, cells * cells, dim]: the ``grid`` [B, side * side, dim] inside each image's prompted
    boxes, resampled to ``cells`` x ``cells`` by torchvision's RoIAlign (summed over boxes); zeros
    where an image has no box."""
    from torchvision.ops import roi_align  # deferred: a 1 s import

    b = grid.shape[0]
    out = grid.new_zeros(b, cells * cells, grid.shape[-1])
    boxes = _boxes(prompt, b, grid.device)
    if boxes is None:
        return out
    image = rearrange(grid, "b (h w) d -> b d h w", h=side).float()
    index = torch.arange(b, device=grid.device, dtype=torch.float32)[:, None]
    for box in boxes.unbind(1):
        present = (box >= 0).all(-1)[:, None, None]
        crop = roi_align(image, torch.cat([index, box.clamp(0, 1) * side], 1), cells, sampling_ratio=2, aligned=True)
        out = out + (rearrange(crop, "b d h w -> b (h w) d") * present).to(out.dtype)
    return out


def paste_crops(crops: torch.Tensor, prompt: Prompt | None, side: int) -> torch.Tensor:
    """[B, side * side, dim]: ``crops`` [B, cells * cells, dim] drawn into each image's prompted
    boxes (bilinear, in box coordinates; summed over boxes), zeros outside them."""
    b, cells = crops.shape[0], math.isqrt(crops.shape[1])
    out = crops.new_zeros(b, side * side, crops.shape[-1])
    boxes = _boxes(prompt, b, crops.device)
    if boxes is None:
        return out
    image = rearrange(crops, "b (h w) d -> b d h w", h=cells).float()
    for box in boxes.unbind(1):
        drawn, inside = _draw_in_box(image, box, side)
        out = out + rearrange(drawn * inside, "b d h w -> b (h w) d").to(out.dtype)
    return out


def _draw_in_box(image: torch.Tensor, box: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` [B, C, h, w] stretched over ``box`` [B, 4] of a ``side`` x ``side`` canvas
    (bilinear, in box coordinates): the drawing [B, C, side, side] and where it lies inside the box
    [B, 1, side, side] (none for a box of -1s)."""
    centres = (torch.arange(side, device=image.device) + 0.5) / side
    size = (box[:, 2:] - box[:, :2]).clamp_min(1e-6)
    u = (centres[None] - box[:, 0, None]) / size[:, 0, None] * 2 - 1  # [B, side]: -1 .. 1 across the box
    v = (centres[None] - box[:, 1, None]) / size[:, 1, None] * 2 - 1
    where = torch.stack(torch.broadcast_tensors(u[:, None, :], v[:, :, None]), -1)  # [B, side, side, (x, y)]
    drawn = nn.functional.grid_sample(image, where, align_corners=False, padding_mode="border")
    inside = ((where.abs() <= 1).all(-1) & (box >= 0).all(-1)[:, None, None])[:, None]
    return drawn, inside


def prompt_regions(prompt: Prompt | None, batch: int, device: torch.device, radius: float = POINT_RADIUS) -> torch.Tensor:
    """[B, 4] per image the box around everything its prompt asks for (its boxes, and the square
    around each foreground point's disc of ``radius``, clipped to the image); a row of -1s where it
    asks for nothing."""
    lo = torch.full((batch, 2), math.inf, device=device)
    hi = torch.full((batch, 2), -math.inf, device=device)
    boxes = _boxes(prompt, batch, device)
    if boxes is not None:
        present = (boxes >= 0).all(-1, keepdim=True)
        lo = torch.minimum(lo, torch.where(present, boxes[..., :2], math.inf).amin(1))
        hi = torch.maximum(hi, torch.where(present, boxes[..., 2:], -math.inf).amax(1))
    if prompt is not None and prompt.points is not None:
        points, foreground = _points(prompt, batch, device)
        present = (foreground & (points >= 0).all(-1))[..., None]
        lo = torch.minimum(lo, torch.where(present, (points - radius).clamp_min(0), math.inf).amin(1))
        hi = torch.maximum(hi, torch.where(present, (points + radius).clamp_max(1), -math.inf).amax(1))
    regions = torch.cat([lo, hi], -1)
    return torch.where(torch.isfinite(regions).all(-1, keepdim=True), regions, -1.0)


def region_positions(k: int, share: float) -> torch.Tensor:
    """[k] bool: which of a budget's first ``k`` positions carry the region's tokens when ``share``
    of them do: the first, then each where ``ceil(i * share)`` steps up, so every prefix holds
    ``ceil(k * share)`` of them and any prefix still decodes."""
    counts = [math.ceil(i * share - 1e-9) for i in range(k + 1)]
    return torch.tensor([counts[i + 1] > counts[i] for i in range(k)])


def crop_images(images: torch.Tensor, regions: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, size, size]: each image's ``regions`` [B, 4] box (normalised x0, y0, x1, y1)
    resampled to ``size`` x ``size`` bilinearly (torchvision's RoIAlign, one sample a cell at its
    centre: the whole image at its own size comes back unchanged; any aspect stretched to a square)."""
    from torchvision.ops import roi_align  # deferred: a 1 s import

    index = torch.arange(len(images), device=images.device, dtype=torch.float32)[:, None]
    scale = torch.tensor([images.shape[-1], images.shape[-2]] * 2, device=images.device, dtype=torch.float32)
    return roi_align(images.float(), torch.cat([index, regions.float() * scale], 1), size, sampling_ratio=1, aligned=True)


def paste_images(inner: torch.Tensor, regions: torch.Tensor, around: torch.Tensor) -> torch.Tensor:
    """``around`` [B, C, S, S] with ``inner`` [B, C, s, s] drawn into each image's ``regions`` [B, 4]
    box (``crop_images``' inverse)."""
    drawn, inside = _draw_in_box(inner.float(), regions.float(), around.shape[-1])
    return torch.where(inside, drawn, around.float())


def box_mask(prompt: Prompt | None, batch: int, size: int, device: torch.device) -> torch.Tensor | None:
    """[B, 1, size, size] 1 inside the prompt's boxes (pixel centres), else 0; None without boxes."""
    boxes = _boxes(prompt, batch, device)  # [B, P, 4]
    if boxes is None:
        return None
    centres = (torch.arange(size, device=device) + 0.5) / size
    x, y = centres[None, None, None, :], centres[None, None, :, None]
    inside = ((x >= boxes[..., 0, None, None]) & (x <= boxes[..., 2, None, None])
              & (y >= boxes[..., 1, None, None]) & (y <= boxes[..., 3, None, None]))  # [B, P, H, W]
    present = (boxes >= 0).all(-1)[..., None, None]  # a box of -1s stands for none
    return (inside & present).any(1, keepdim=True).float()


def point_mask(prompt: Prompt | None, batch: int, size: int, device: torch.device,
               radius: float = POINT_RADIUS) -> torch.Tensor | None:
    """[B, 1, size, size] 1 within ``radius`` (a fraction of the side) of a foreground point (pixel
    centres), else 0; None without points. Points at -1 stand for none (training)."""
    if prompt is None or prompt.points is None:
        return None
    points, foreground = _points(prompt, batch, device)  # [B, P, 2], [B, P]
    centres = (torch.arange(size, device=device) + 0.5) / size
    dx = centres[None, None, None, :] - points[..., 0, None, None]
    dy = centres[None, None, :, None] - points[..., 1, None, None]
    near = dx.pow(2) + dy.pow(2) <= radius**2  # [B, P, H, W]
    present = (foreground & (points >= 0).all(-1))[..., None, None]
    return (near & present).any(1, keepdim=True).float()


def region_mask(prompt: Prompt | None, batch: int, size: int, device: torch.device,
                radius: float = POINT_RADIUS) -> torch.Tensor | None:
    """[B, 1, size, size] the region a prompt asks for: inside any of its boxes or near any of its
    foreground points (``point_mask``); None when it has neither."""
    masks = [m for m in (box_mask(prompt, batch, size, device), point_mask(prompt, batch, size, device, radius))
             if m is not None]
    if not masks:
        return None
    return torch.stack(masks).amax(0)
