"""A dataset from any directory tree of images, captioned the Hugging Face imagefolder way.

Captions come from ``metadata.jsonl`` files (one JSON object per line with ``file_name``
relative to the jsonl's directory and ``text`` or ``caption``), else from a sidecar ``.txt``
with the image's stem, else "". Images are resized (shorter side, bicubic, antialiased),
centre-cropped to ``size x size`` and converted to RGB (alpha composited on black); with
``random_crop`` (training) each read takes a random square of at least that fraction of the shorter
side instead (``images.resize_random_crop``), so a small folder gives a tokenizer many views.

Lazy by design: the constructor only lists files (and, for a split, hashes their bytes: no
decoding), so a folder of a million images opens in seconds to minutes; pixels are decoded in
``__getitem__``. A file that fails to decode never crashes a
run: it is recorded in ``dataset.skipped``, warned about once, and the next readable index is
returned instead. ``scan()`` decodes everything up front when you want the full report.

Splits: ``split="all"`` uses every image. ``"train"`` / ``"val"`` / ``"test"`` are disjoint, by a
SHA-256 hash of each file's *content* (its bytes) into [0, 1): below ``HELD_OUT["val"]`` (5%) is
val, the next ``HELD_OUT["test"]`` (5%) test, the rest train. Copies of a file under other names
fall in one split, and a renamed or moved file keeps its split. A small folder: from
``MIN_HELD_OUT`` (3) distinct contents on, an empty val, then an empty test, takes the lowest hash
left (and none takes all), so no split is empty and val and test are always the lowest hashes; adding files never moves a
training image into val or test (while the folder is small, it may move a held-out one on).
Re-encoded copies (same pixels, other bytes) are not caught: ``trilemma data splits`` measures
them. The split reads every file once (memoised in the process by path, size and modification
time); ``"all"`` reads nothing up front.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import torch
from PIL import Image

from trilemma.images import ImageReadError, open_rgb, pil_to_tensor, resize_center_crop, resize_random_crop

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SPLITS = ("all", "train", "val", "test")
HELD_OUT = {"val": 0.05, "test": 0.05}  # shares of the hash range, in this order; train the rest
MIN_HELD_OUT = 3  # distinct contents from which val and test hold at least one each
REPORT_NAMES = 5  # how many skipped file names a report lists
# Random crops re-crop the same files every epoch: up to this many are kept decoded (at the smallest
# resolution every crop still needs: ~100 KB each at 64 px and crops of a third), in each process.
CROP_CACHE = 4096


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, memoised by path, size and modification time."""
    st = os.stat(path)
    return _digest(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.cache
def _digest(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file re-hashes
    h = hashlib.sha256()
    with open(path, "rb") as f:  # in chunks: hashlib.file_digest needs Python 3.11
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_position(digest: str) -> float:
    """A content digest as a number in [0, 1): where it falls among the splits."""
    return int(digest[:16], 16) / 2**64


def assign_splits(digests: dict[str, str]) -> dict[str, str]:
    """Each file (relpath -> content digest) -> "train", "val" or "test", by its content's hash.

    The rule of the module docstring: thresholds on ``hash_position``; with at least
    ``MIN_HELD_OUT`` distinct contents, an empty val (then test) takes the lowest remaining content,
    and none takes the last content a later split (test, train) needs.
    """
    contents = sorted(set(digests.values()), key=hash_position)
    split_of, bound, start = {}, 0.0, 0
    for i, (split, share) in enumerate(HELD_OUT.items()):
        bound += share
        end = start
        while end < len(contents) and hash_position(contents[end]) < bound:
            end += 1
        if len(contents) >= MIN_HELD_OUT:  # one at least, and one left for each later split
            end = min(max(end, start + 1), len(contents) - (len(HELD_OUT) - i))
        split_of.update((c, split) for c in contents[start:end])
        start = end
    return {rel: split_of.get(d, "train") for rel, d in digests.items()}


class FolderDataset(torch.utils.data.Dataset):
    """Images under ``root`` (recursively, hidden files and folders ignored), sorted by path.

    Items: ``{"image": [3, size, size] in [-1, 1], "caption": str, "attributes": None,
    "path": str}``. With a multi-process DataLoader each worker keeps its own ``skipped``.
    """

    def __init__(self, root: str | os.PathLike, size: int = 32,
                 extensions: tuple[str, ...] = EXTENSIONS, split: str = "all", random_crop: float = 0.0):
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        if not self.root.is_dir():
            raise NotADirectoryError(f"not a folder of images: {self.root}")
        if split not in SPLITS:
            raise ValueError(f"unknown `split` {split!r}: expected one of {', '.join(SPLITS)}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0 <= random_crop <= 1:
            raise ValueError(f"`random_crop` must be in [0, 1] (0: centre crop), got {random_crop!r}")
        self.size, self.split, self.random_crop = int(size), split, float(random_crop)
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}"
                                for e in extensions)
        files, texts, metadata = self._walk()
        if not files:
            raise ValueError(f"no images in {self.root} (accepted extensions: "
                             f"{', '.join(self.extensions)})")
        self.skipped: dict[str, str] = {}  # relpath -> reason, for files that failed to read
        if split != "all":
            files = self._split_files(files, split)
        self.files: list[str] = files  # '/'-separated paths relative to root
        self._texts = texts  # sidecar .txt relpaths, read lazily
        self._captions = self._read_metadata(metadata)
        self._decoded: dict[str, Image.Image] = {}  # random crops' sources (``_source``)

    # -------------------------------------------------------------------------- listing
    def _split_files(self, files: list[str], split: str) -> list[str]:
        digests = {}
        for rel in files:
            try:
                digests[rel] = content_digest(self.root / rel)
            except OSError as err:  # listed but unreadable: in no split, reported like a bad image
                self.skipped[rel] = str(err)
                warnings.warn(f"skipping unreadable image {self.root / rel}: {err}", stacklevel=3)
        assigned = assign_splits(digests)
        kept = [rel for rel in files if assigned.get(rel) == split]
        if not kept:
            shares = ", ".join(f"{s} {f:.0%}" for s, f in HELD_OUT.items())
            raise ValueError(f"the {split!r} split of {self.root} is empty ({len(set(digests.values()))} "
                             f"distinct image file(s); by content hash {shares}, at least one each "
                             f"from {MIN_HELD_OUT}): use `split='all'`")
        return kept

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
        if self.random_crop:
            img = resize_random_crop(self._source(rel), self.size, self.random_crop)
        else:
            img = resize_center_crop(open_rgb(self.root / rel, draft_size=self.size), self.size)
        return {"image": pil_to_tensor(img), "caption": self.caption(rel), "attributes": None,
                "path": str(self.root / rel)}

    def _source(self, rel: str) -> Image.Image:
        """File ``rel`` decoded and reduced (never enlarged) to the shorter side the smallest random
        crop needs; the first ``CROP_CACHE`` files are kept (PNG decoding took ~10x a step's compute)."""
        if rel in self._decoded:
            return self._decoded[rel]
        need = math.ceil(self.size / self.random_crop)
        img = open_rgb(self.root / rel, draft_size=need)
        scale = need / min(img.size)
        if scale < 1:
            img = img.resize((max(need, round(img.width * scale)), max(need, round(img.height * scale))),
                             Image.Resampling.BICUBIC, reducing_gap=3.0)
        if len(self._decoded) < CROP_CACHE:
            self._decoded[rel] = img
        return img

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
                + (f"random_crop={self.random_crop:g}, " if self.random_crop else "") + f"images={len(self.files)})")
