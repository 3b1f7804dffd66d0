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

from trilemma import checkpoint, registry
from trilemma.data.text import TextTokenizer, words
from trilemma.files import atomic_write_bytes
from trilemma.tokenizers.base import Tokenizer
from trilemma.tokens import Tokens
from trilemma.train import TrainConfig, init_distributed, resolve_checkpoint, train


VAL_ITEMS = 256  # the last tokenized items are a held-out validation set
AUTO_TEXT_LENGTH_MAX = 64  # cap on the default text length (the longest caption + eos)


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
    # Captions first: a cache hit needs both files, and the tokens file appears last, whole.
    atomic_write_bytes(captions_path, json.dumps(captions).encode())
    tmp = path.with_suffix(".tmp")
    tokens.save(tmp, spec=tokenizer.spec)
    tmp.replace(path)
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


def train_generator(
    kind: str, tokenizer: str | Path, data: str, out: Path, cfg: TrainConfig, preset: str | None = None,
    num_images: int = 20000, text_length: int | None = None, resume: bool = False, cache_dir: Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a ``kind`` generator (preset default ``KIND-shapes``) on the tokens of ``tokenizer``.

    The tokenized dataset is cached in ``cache_dir`` (default ``out/cache``), keyed by the
    tokenizer's content hash and the data, so generators sharing a cache tokenize only once.
    ``text_length`` (text positions, eos included) defaults to the longest training caption + eos,
    up to ``AUTO_TEXT_LENGTH_MAX``: positions no caption reaches would never be trained."""
    from trilemma.data import load_dataset

    init_distributed()
    tok_dir = resolve_checkpoint(tokenizer)
    tok = checkpoint.load(tok_dir, kind="tokenizer")
    out = Path(out)
    dataset = load_dataset(data, split="train", size=tok.image_size, seed=cfg.seed)
    n = min(num_images + VAL_ITEMS, len(dataset))
    if n <= VAL_ITEMS:
        raise ValueError(f"{data} has {len(dataset)} training images; a generator needs more than {VAL_ITEMS}")
    tokens, captions = tokenize_dataset(tok, dataset, n, cache_dir or out / "cache", data_key=repr(dataset))
    text_path = out / "text.json"
    if resume and text_path.is_file():
        text = TextTokenizer.load(text_path)
    else:
        if text_length is None:
            longest = max(len(words(c)) for c in captions)  # 0 when the data has no captions
            text_length = min(AUTO_TEXT_LENGTH_MAX, 1 + max(1, longest))
        text = TextTokenizer.build(captions, max_length=text_length)
        out.mkdir(parents=True, exist_ok=True)
        text.save(text_path)
    preset = preset or f"{kind}-shapes"
    torch.manual_seed(cfg.seed)
    generator = registry.build("generator", preset, spec=tok.spec, text=text, **overrides)
    if generator.registry_name != kind:
        raise ValueError(f"preset {preset} is a {generator.registry_name} generator, not {kind}")
    val = load_dataset(data, split="val", size=tok.image_size, seed=cfg.seed)
    prompts = [val[i]["caption"] for i in range(8)]
    task = GeneratorTask(generator, tok, tokens, captions, text, prompts, tok_dir, data)
    return train(task, cfg, out, resume=resume)
