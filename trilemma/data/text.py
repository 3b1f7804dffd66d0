"""The built-in word-level text tokenizer: captions -> fixed-length id sequences.

Idea: the captions of a synthetic or small dataset use a few hundred words, so a vocabulary
built from the training captions (as in the DALL-E / Parti style text encoders, minus the BPE)
is all a small generator needs, and it is exact and inspectable. The vocabulary is ordered by
frequency then alphabetically, so building it twice from the same captions gives the same ids.
It is saved as JSON inside the generator checkpoint.

Special ids: pad = 0, unk = 1, eos = 2. ``encode`` appends eos and pads to ``max_length``;
longer captions are truncated (keeping eos last), counted and warned about, never silently.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch

from trilemma.files import atomic_write_bytes

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIALS = (PAD, UNK, EOS)  # their ids are their positions: 0, 1, 2
FORMAT_VERSION = 1
_WORD = re.compile(r"[^\W_]+")  # runs of letters/digits (any script); everything else splits


def words(text: str) -> list[str]:
    """Lowercase and split on anything that is not a letter or digit."""
    return _WORD.findall(text.lower())


class TextTokenizer:
    """Word-level tokenizer with a fixed vocabulary and a fixed output length."""

    pad_id, unk_id, eos_id = 0, 1, 2

    def __init__(self, vocab: list[str], max_length: int = 32):
        if list(vocab[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"a vocabulary must start with {list(SPECIALS)}, got "
                             f"{list(vocab[:len(SPECIALS)])}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("the vocabulary has duplicate words")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (one word + eos), got {max_length}")
        self.vocab = list(vocab)
        self.max_length = int(max_length)
        self.word_to_id = {w: i for i, w in enumerate(self.vocab)}
        self.truncated = 0  # captions cut to max_length so far, across encode() calls

    @classmethod
    def build(cls, captions: Iterable[str], max_length: int = 32,
              min_freq: int = 1) -> "TextTokenizer":
        """Vocabulary of every word seen at least ``min_freq`` times, most frequent first."""
        counts = Counter(w for c in captions for w in words(c))
        kept = sorted((w for w, n in counts.items() if n >= min_freq and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept, max_length=max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Captions -> LongTensor [B, max_length]: word ids, eos, then pad."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of captions; wrap a single one as [text]")
        out = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        cut = 0
        for row, text in enumerate(texts):
            ids = [self.word_to_id.get(w, self.unk_id) for w in words(text)]
            if len(ids) > self.max_length - 1:  # keep room for eos
                ids = ids[: self.max_length - 1]
                cut += 1
            ids.append(self.eos_id)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        if cut:
            self.truncated += cut
            warnings.warn(f"truncated {cut} of {len(texts)} caption(s) to max_length="
                          f"{self.max_length} tokens (including eos)", stacklevel=2)
        return out

    def decode(self, ids) -> list[str]:
        """[B, L] (or [L]) ids -> captions; stops at eos, skips pad, unknown words -> <unk>."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if ids and isinstance(ids[0], int):
            ids = [ids]
        texts = []
        for row in ids:
            out = []
            for i in row:
                if i == self.eos_id:
                    break
                if i == self.pad_id:
                    continue
                out.append(self.vocab[i] if 0 <= i < len(self.vocab) else UNK)
            texts.append(" ".join(out))
        return texts

    # ---------------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "max_length": self.max_length,
                "vocab": self.vocab}

    @classmethod
    def from_dict(cls, d: dict) -> "TextTokenizer":
        if not isinstance(d, dict) or "vocab" not in d:
            raise ValueError("not a text tokenizer: expected a dict with 'vocab'")
        if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ValueError(f"text tokenizer format_version {d['format_version']} is newer "
                             f"than this code ({FORMAT_VERSION})")
        return cls(d["vocab"], max_length=d.get("max_length", 32))

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temp file + rename)."""
        return atomic_write_bytes(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1).encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextTokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"text tokenizer file not found: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as err:
            raise ValueError(f"corrupt text tokenizer file {path}: {err}") from err

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"
