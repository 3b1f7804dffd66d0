"""Image I/O: files <-> tensors in the project's convention, and captioned PNG grids.

Convention: an image is float32 [3, H, W] in [-1, 1] (a batch is [B, 3, H, W]); uint8 pixel
``u`` maps to ``u / 127.5 - 1`` and back exactly. Everything that turns a file into an RGB
image (mode conversion, EXIF rotation, resize + centre crop) lives here so the CLI and the
folder dataset read images the same way. Writes are atomic (temp file + ``os.replace``): a
killed run never leaves a half-written PNG behind.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from trilemma.files import atomic_write_bytes

BACKGROUND = 0  # transparent pixels are composited on black, the shapes dataset's background
MIN_CELL_WIDTH = 128  # save_grid upscales cells to at least this many pixels so text fits
FONT_SIZE = 12  # PIL's built-in font (no font files); 12 px reads well under 128 px cells


class ImageReadError(OSError):
    """A file exists but is not a decodable image (truncated, corrupt, unknown format)."""


# ------------------------------------------------------------------------------------ decode
def open_rgb(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Decode a file fully into an RGB PIL image; errors name the file.

    ``draft_size`` lets JPEG decode at a reduced scale that is still >= that size (much faster
    for large photos; the result is resized afterwards anyway).
    """
    return _decode(path, draft_size)[0]


def _decode(path: str | os.PathLike, draft_size: int | None) -> tuple[Image.Image, tuple]:
    """(RGB image, size stored in the file before any draft scaling or rotation)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            original = img.size
            if draft_size is not None and img.format == "JPEG":
                img.draft(img.mode, (draft_size, draft_size))
            img.load()  # decode now: truncated files fail here, not later
            img = ImageOps.exif_transpose(img)  # camera photos store rotation in EXIF
            return to_rgb(img), original
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Alpha is composited on black (``BACKGROUND``)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit greyscale (PNG, TIFF)
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() if arr.size else 0.0
        # 16-bit data spans 0..65535; float data is usually 0..1
        scale = 255.0 / 65535.0 if peak > 255 else 255.0 if img.mode == "F" and peak <= 1 else 1.0
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode in ("P", "PA") and (img.mode == "PA" or "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode in ("LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        out = Image.new("RGB", img.size, (BACKGROUND,) * 3)
        out.paste(img, mask=img.getchannel("A"))
        return out
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic, antialiased) and centre-crop a square.

    Done as one resample of the centred square ``box`` so no intermediate rounding happens.
    """
    w, h = img.size
    if (w, h) == (size, size):
        return img
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box)


def resize_random_crop(img: Image.Image, size: int, smallest: float) -> Image.Image:
    """A random square of side ``f`` x the shorter side, ``f`` uniform in [``smallest``, 1], at a
    uniform position, resized to ``size x size`` in one resample (bicubic). Drawn from torch's
    generator, so a seeded run (and each DataLoader worker's seed) repeats its crops."""
    if not 0 < smallest <= 1:
        raise ValueError(f"`smallest` must be in (0, 1], got {smallest!r}")
    w, h = img.size
    u = torch.rand(3).tolist()
    s = min(w, h) * (smallest + (1 - smallest) * u[0])
    x, y = (w - s) * u[1], (h - s) * u[2]
    return img.resize((size, size), Image.Resampling.BICUBIC, box=(x, y, x + s, y + s))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [3, H, W] in [-1, 1]."""
    arr = np.asarray(to_rgb(img), dtype=np.uint8)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float() / 127.5 - 1.0


def load_image(path: str | os.PathLike, size: int | None = None) -> torch.Tensor:
    """Read an image file as float32 [3, H, W] in [-1, 1].

    With ``size``, an image of another size is resized (shorter side) and centre-cropped to
    ``size x size``, with a warning naming the original and target sizes.
    """
    img, original = _decode(path, draft_size=size)
    if size is not None and img.size != (size, size):
        warnings.warn(f"{path}: resized {original[0]}x{original[1]} -> {size}x{size} "
                      "(shorter side, centre crop)", stacklevel=2)
        img = resize_center_crop(img, size)
    return pil_to_tensor(img)


# ------------------------------------------------------------------------------------ encode
def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] (any shape) -> uint8 tensor of the same shape (clamped)."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] (or [1, 3, H, W]) in [-1, 1] -> RGB PIL image."""
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image of shape [3, H, W], got {list(image.shape)}")
    return Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy())


def save_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write one image ([3, H, W] in [-1, 1]); the format follows the file extension."""
    return _atomic_save(to_pil(image), path)


def side_by_side(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate images along width: original | reconstruction ([..., 3, H, 2W])."""
    if a.shape != b.shape:
        raise ValueError(f"side_by_side needs equal shapes, got {list(a.shape)} and "
                         f"{list(b.shape)}")
    return torch.cat([a, b], dim=-1)


def save_grid(images: torch.Tensor, path: str | os.PathLike, captions: list[str] | None = None,
              nrow: int | None = None, scale: int | None = None, title: str | None = None,
              pad: int = 4) -> Path:
    """Write a PNG grid of ``images`` ([B, 3, H, W] in [-1, 1]), optionally captioned.

    ``nrow`` images per row (default ceil(sqrt(B))). ``scale`` is the integer NEAREST upscale
    of each image; by default the smallest that makes cells >= 128 px wide, so tiny images and
    their captions are readable (pass ``scale=1`` for raw pixels). Captions are word-wrapped
    under each cell in PIL's built-in font; ``title`` goes on top. Size of the result:
    width ``ncol * W * scale + (ncol + 1) * pad``, height ``pad + title_h + nrows * (H * scale
    + caption_h + pad)`` with ``title_h = caption_h = 0`` when absent.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape [B, 3, H, W], got {list(images.shape)}")
    n, _, h, w = images.shape
    if n == 0:
        raise ValueError("save_grid needs at least one image")
    if captions is not None and len(captions) != n:
        raise ValueError(f"got {len(captions)} captions for {n} images")
    ncol = min(nrow or math.ceil(math.sqrt(n)), n)
    nrows = math.ceil(n / ncol)
    scale = scale or max(1, math.ceil(MIN_CELL_WIDTH / w))
    cw, ch = w * scale, h * scale
    width = ncol * cw + (ncol + 1) * pad

    font = ImageFont.load_default(size=FONT_SIZE)  # bitmap fallback (size ignored) w/o FreeType
    line_h = _line_height(font)
    caption_lines = [_wrap(c, font, cw) for c in captions] if captions is not None else []
    caption_h = max(len(lines) for lines in caption_lines) * line_h + pad if caption_lines else 0
    title_lines = _wrap(title, font, width - 2 * pad) if title else []
    title_h = len(title_lines) * line_h + pad if title_lines else 0
    height = pad + title_h + nrows * (ch + caption_h + pad)

    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(title_lines):
        draw.text((pad, pad + k * line_h), line, fill=(0, 0, 0), font=font)
    pixels = to_uint8(images).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, c = divmod(i, ncol)
        x = pad + c * (cw + pad)
        y = pad + title_h + r * (ch + caption_h + pad)
        cell = Image.fromarray(pixels[i])
        if scale != 1:  # NEAREST keeps pixels crisp: we want to see what the model drew
            cell = cell.resize((cw, ch), Image.Resampling.NEAREST)
        canvas.paste(cell, (x, y))
        for k, line in enumerate(caption_lines[i] if caption_lines else []):
            draw.text((x, y + ch + 2 + k * line_h), line, fill=(0, 0, 0), font=font)
    return _atomic_save(canvas, path, format="PNG")


def _line_height(font) -> int:
    box = font.getbbox("Agjy|")
    return int(box[3] - min(box[1], 0)) + 2


def _wrap(text: str, font, width: int, max_lines: int = 8) -> list[str]:
    """Greedy word wrap to ``width`` pixels; an overlong word is split where it stops fitting
    (found by bisection); past ``max_lines`` the text is cut with an ellipsis. Work stops there, so
    the cost is linear in what is drawn, not in the caption (a 4,000-character word was minutes)."""
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            if len(lines) > max_lines:
                break
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and len(lines) <= max_lines and font.getlength(word) > width:
                cut = _fitting_prefix(word, font, width)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
        if len(lines) > max_lines:
            break
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, len(lines[-1]) - 3)] + "..."
    return lines


def _fitting_prefix(word: str, font, width: int) -> int:
    """The length of the longest prefix of ``word`` (at least 1) that fits in ``width`` pixels."""
    lo, hi = 1, len(word) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(word[:mid]) <= width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _atomic_save(img: Image.Image, path: str | os.PathLike, format: str | None = None) -> Path:
    path = Path(path)
    if format is None:
        format = Image.registered_extensions().get(path.suffix.lower())
        if format is None:
            raise ValueError(f"cannot tell the image format of {path}: use an extension "
                             "such as .png or .jpg")
    buf = io.BytesIO()
    img.save(buf, format=format)
    return atomic_write_bytes(path, buf.getvalue())
