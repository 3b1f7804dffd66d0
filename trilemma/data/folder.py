"""A dataset from any directory tree of images, captioned the Hugging Face imagefolder way.

Captions come from ``metadata.jsonl`` files (one JSON object per line with ``file_name``
relative to the jsonl's directory and ``text`` or ``caption``), else from a sidecar ``.txt``
with the image's stem, else "". Images are resized (shorter side, bicubic, antialiased),
centre-cropped to ``size x size`` and converted to RGB (alpha composited on black).

Lazy by design: the constructor only lists files, so a folder of a million images opens in
seconds; pixels are decoded in ``__getitem__``. A file that fails to decode never crashes a
run: it is recorded in ``dataset.skipped``, warned about once, and the next readable index is
returned instead. ``scan()`` decodes everything up front when you want the full report.

Splits: ``split="all"`` uses every image. ``"train"`` / ``"val"`` is a deterministic 95 / 5
partition by a SHA-256 hash of the image's relative path (``"test"`` is ``"val"``), so the
partition never changes when files are added elsewhere in the tree and is the same on every
machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch

from trilemma.images import ImageReadError, open_rgb, pil_to_tensor, resize_center_crop

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SPLITS = ("all", "train", "val", "test")
VAL_FRACTION = 0.05  # share of images held out for "val" / "test"
REPORT_NAMES = 5  # how many skipped file names a report lists


def in_val_split(relpath: str) -> bool:
    """Deterministic hold-out: hash the '/'-separated relative path into [0, 1)."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < VAL_FRACTION


class FolderDataset(torch.utils.data.Dataset):
    """Images under ``root`` (recursively, hidden files and folders ignored), sorted by path.

    Items: ``{"image": [3, size, size] in [-1, 1], "caption": str, "attributes": None,
    "path": str}``. With a multi-process DataLoader each worker keeps its own ``skipped``.
    """

    def __init__(self, root: str | os.PathLike, size: int = 32,
                 extensions: tuple[str, ...] = EXTENSIONS, split: str = "all"):
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        if not self.root.is_dir():
            raise NotADirectoryError(f"not a folder of images: {self.root}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size, self.split = int(size), split
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}"
                                for e in extensions)
        files, texts, metadata = self._walk()
        if not files:
            raise ValueError(f"no images in {self.root} (accepted extensions: "
                             f"{', '.join(self.extensions)})")
        if split != "all":
            held_out = split in ("val", "test")
            files = [f for f in files if in_val_split(f) == held_out]
            if not files:
                raise ValueError(f"the {split!r} split of {self.root} is empty (a hash-based "
                                 f"{1 - VAL_FRACTION:.0%}/{VAL_FRACTION:.0%} partition of too "
                                 "few images): use split='all'")
        self.files: list[str] = files  # '/'-separated paths relative to root
        self._texts = texts  # sidecar .txt relpaths, read lazily
        self._captions = self._read_metadata(metadata)
        self.skipped: dict[str, str] = {}  # relpath -> reason, for files that failed to decode

    # -------------------------------------------------------------------------- listing
    def _walk(self) -> tuple[list[str], set[str], list[str]]:
        files, texts, metadata = [], set(), []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(self.root).as_posix()
            prefix = "" if rel == "." else rel + "/"
            for name in filenames:
                if name.startswith("."):  # e.g. macOS "._x.jpg" resource forks: not images
                    continue
                ext = os.path.splitext(name)[1].lower()
                if ext in self.extensions:
                    files.append(prefix + name)
                elif ext == ".txt":
                    texts.add(prefix + name)
                elif name == "metadata.jsonl":
                    metadata.append(prefix + name)
        return sorted(files), texts, sorted(metadata)

    def _read_metadata(self, metadata: list[str]) -> dict[str, str]:
        captions: dict[str, str] = {}
        for rel in metadata:
            base = os.path.dirname(rel)
            with open(self.root / rel, encoding="utf-8", errors="replace") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                        name = row["file_name"]
                        text = row["text"] if "text" in row else row.get("caption", "")
                        key = os.path.normpath(os.path.join(base, name)).replace(os.sep, "/")
                    except (ValueError, KeyError, TypeError, AttributeError) as err:
                        warnings.warn(f"{self.root / rel}:{lineno}: skipping malformed "
                                      f"metadata line ({err!r})", stacklevel=3)
                        continue
                    captions[key] = "" if text is None else str(text)
        return captions

    def caption(self, relpath: str) -> str:
        """metadata.jsonl first, then a sidecar ``<stem>.txt``, else ""."""
        if relpath in self._captions:
            return self._captions[relpath]
        sidecar = os.path.splitext(relpath)[0] + ".txt"
        if sidecar in self._texts:
            try:
                return (self.root / sidecar).read_text(encoding="utf-8", errors="replace").strip()
            except OSError:
                return ""
        return ""

    # --------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> dict:
        """Decode item ``index``; raises ImageReadError (naming the file) if it is unreadable."""
        rel = self.files[index]
        img = resize_center_crop(open_rgb(self.root / rel, draft_size=self.size), self.size)
        return {"image": pil_to_tensor(img), "caption": self.caption(rel), "attributes": None,
                "path": str(self.root / rel)}

    def __getitem__(self, index: int) -> dict:
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for step in range(n):  # substitute the next readable file, wrapping around
            i = (index + step) % n
            rel = self.files[i]
            if rel in self.skipped:
                continue
            try:
                return self.load(i)
            except (ImageReadError, FileNotFoundError) as err:
                self.skipped[rel] = str(err)
                warnings.warn(f"skipping unreadable image {self.root / rel}: {err.__cause__ or err}"
                              f" ({len(self.skipped)} skipped so far)", stacklevel=2)
        raise RuntimeError(f"none of the {n} images in {self.root} could be read: "
                           f"{self.report()}")

    def scan(self) -> str:
        """Decode every file now (slow: one full pass), record failures, return ``report()``."""
        for rel in self.files:
            if rel in self.skipped:
                continue
            try:
                open_rgb(self.root / rel, draft_size=self.size)
            except (ImageReadError, FileNotFoundError) as err:
                self.skipped[rel] = str(err)
        report = self.report()
        if self.skipped:
            warnings.warn(report, stacklevel=2)
        return report

    def report(self) -> str:
        """One line: how many files were skipped, and the first few names."""
        if not self.skipped:
            return f"{self.root}: no unreadable images found so far ({len(self.files)} images)"
        names = list(self.skipped)[:REPORT_NAMES]
        extra = len(self.skipped) - len(names)
        more = f" and {extra} more" if extra else ""
        return (f"{self.root}: skipped {len(self.skipped)} unreadable image(s) of "
                f"{len(self.files)}: {', '.join(names)}{more}")

    def __repr__(self) -> str:
        return (f"FolderDataset(root={str(self.root)!r}, size={self.size}, split={self.split!r}, "
                f"images={len(self.files)})")
