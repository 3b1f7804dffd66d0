"""Training a generator: the dataset is tokenized once (cached beside the run), then the shared loop
in ``train.py`` optimises ``generator.loss`` on (image tokens, caption ids) pairs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from trilemma import checkpoint
from trilemma.data.text import TextTokenizer
from trilemma.tokenizers.base import Tokenizer
from trilemma.tokens import Tokens


VAL_ITEMS = 256  # the last tokenized items are a held-out validation set


class _Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def tokenize_dataset(
    tokenizer: Tokenizer, dataset: Any, n: int, cache_dir: Path, data_key: str, batch_size: int = 128
) -> tuple[Tokens, list[str]]:
    """Encode the first ``n`` items once; reuse the cache when tokenizer weights and data match."""
    tok_dir = getattr(tokenizer, "checkpoint_dir", None)
    tok_id = checkpoint.content_hash(tok_dir) if tok_dir else "unsaved"
    key = hashlib.sha256(json.dumps([tok_id, data_key, n]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"tokens-{key}.safetensors"
    captions_path = path.with_suffix(".json")
    if path.is_file() and captions_path.is_file():
        return Tokens.load(path), json.loads(captions_path.read_text())
    parts, captions = [], []
    tokenizer.eval()
    for start in tqdm(range(0, n, batch_size), desc="tokenize dataset", dynamic_ncols=True):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        parts.append(tokenizer.encode(torch.stack([it["image"] for it in items])))
        captions += [it["caption"] for it in items]
    tokens = Tokens.cat(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tokens.save(tmp, spec=tokenizer.spec)
    tmp.replace(path)
    captions_path.write_text(json.dumps(captions))
    return tokens, captions


class GeneratorTask:
    """Teacher-forced generator loss on cached tokens; a sample grid for fixed prompts at each eval."""

    def __init__(self, generator: Any, tokenizer: Tokenizer, tokens: Tokens, captions: list[str],
                 text: TextTokenizer, eval_prompts: list[str], tokenizer_dir: Path | None, data: str):
        self.model = generator
        self.critic = None
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.text_ids = text.encode(captions)
        self.val = torch.arange(len(captions) - VAL_ITEMS, len(captions))  # held out, never trained on
        self.dataset = _Indices(len(captions) - VAL_ITEMS)
        self.eval_prompts = eval_prompts
        self.text = text
        self.tokenizer_dir = tokenizer_dir
        self.data = data

    def collate(self, idx: list[int]) -> tuple[Tokens, torch.Tensor]:
        index = torch.tensor(idx)
        return self.tokens[index], self.text_ids[index]

    def loss(self, model: Any, batch: tuple[Tokens, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        tokens, text_ids = batch
        raw = getattr(model, "module", model)
        return model(raw.flat_ids(tokens), text_ids)

    def critic_loss(self, batch: Any, step: int) -> None:
        return None

    @torch.no_grad()
    def evaluate(self, model: Any, step: int, out_dir: Path) -> dict[str, float]:
        from trilemma.images import save_grid

        model.eval()
        text_ids = self.text.encode(self.eval_prompts)
        tokens = model.sample(text_ids, temperature=1.0, top_k=None, seed=step)
        images = self.tokenizer.decode(tokens).clamp(-1, 1)
        save_grid(images, Path(out_dir) / "samples" / f"samples_{step:06d}.png", captions=self.eval_prompts)
        losses = model(model.flat_ids(self.tokens[self.val]), self.text_ids[self.val])
        return {f"val_{k}": float(v) for k, v in losses.items()}

    def checkpoint_extra(self) -> dict[str, Any]:
        tok = None
        if self.tokenizer_dir is not None:
            tok = {"path": str(Path(self.tokenizer_dir).resolve()), "hash": checkpoint.content_hash(self.tokenizer_dir)}
        return {"tokenizer": tok, "data": self.data}
