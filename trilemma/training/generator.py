"""Training a generator: the dataset is tokenized once (cached beside the run), then the shared loop
in ``loop.py`` optimises ``generator.loss`` on (image tokens, caption ids) pairs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from trilemma import checkpoint, registry
from trilemma.data import load_dataset
from trilemma.data.text import TextTokenizer, words
from trilemma.files import atomic_write_bytes
from trilemma.generators.sampling import SamplingConfig
from trilemma.images import save_grid
from trilemma.tokenizers.base import Tokenizer
from trilemma.tokens import Prompt, Tokens, TokenSpec
from trilemma.training.loop import Task, TrainConfig, TrainingError, check_run_dir, init_distributed, train

# What `trilemma train generator` uses when a flag is not given.
DEFAULTS = TrainConfig(steps=3000, batch_size=64, lr=5e-4)
NUM_IMAGES = 20000  # training images, tokenized once and cached
VAL_ITEMS = 256  # the last tokenized items are a held-out validation set
AUTO_TEXT_LENGTH_MAX = 64  # cap on the default text length (the longest caption + eos)
EVAL_PROMPTS = 8  # held-out captions sampled into a grid at each evaluation


class _Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def tokenize_dataset(
    tokenizer: Tokenizer, dataset: Any, n: int, cache_dir: Path, data_key: str, batch_size: int = 128,
    budget: int | None = None,
) -> tuple[Tokens, list[str]]:
    """Encode the first ``n`` items once (the first ``budget`` tokens of a promptable tokenizer);
    reuse the cache when tokenizer weights, data and budget match."""
    tok_dir = getattr(tokenizer, "checkpoint_dir", None)
    tok_id = checkpoint.content_hash(tok_dir) if tok_dir else "unsaved"
    key = hashlib.sha256(json.dumps([tok_id, data_key, n] + ([budget] if budget else [])).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"tokens-{key}.safetensors"
    captions_path = path.with_suffix(".json")
    if path.is_file() and captions_path.is_file():
        return Tokens.load(path), json.loads(captions_path.read_text())
    parts, captions = [], []
    tokenizer.eval()
    for start in tqdm(range(0, n, batch_size), desc="tokenize dataset", dynamic_ncols=True):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        parts.append(tokenizer.encode(torch.stack([it["image"] for it in items]), Prompt(budget=budget) if budget else None))
        captions += [it["caption"] for it in items]
    tokens = Tokens.cat(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Captions first: a cache hit needs both files, and the tokens file appears last, whole.
    atomic_write_bytes(captions_path, json.dumps(captions).encode())
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # writers running at once each write their own
    tokens.save(tmp, spec=tokenizer.spec)
    tmp.replace(path)
    return tokens, captions


class GeneratorTask(Task):
    """Teacher-forced generator loss on cached tokens; a sample grid for fixed prompts at each eval."""

    def __init__(self, generator: Any, tokenizer: Tokenizer, tokens: Tokens, captions: list[str],
                 eval_prompts: list[str], extra: dict[str, Any]):
        self.model = generator
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.text_ids = generator.text.encode(captions)
        self.val = torch.arange(len(captions) - VAL_ITEMS, len(captions))  # held out, never trained on
        self.dataset = _Indices(len(captions) - VAL_ITEMS)
        self.eval_prompts = eval_prompts
        self.extra = extra

    def to(self, device: torch.device) -> None:
        self.tokenizer.to(device)

    def collate(self, idx: list[int]) -> tuple[Tokens, torch.Tensor]:
        index = torch.tensor(idx)
        return self.tokens[index], self.text_ids[index]

    def loss(self, model: Any, batch: tuple[Tokens, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        tokens, text_ids = batch
        return model(getattr(model, "module", model).model_input(tokens), text_ids)

    @torch.no_grad()
    def evaluate(self, model: Any, step: int, out_dir: Path) -> dict[str, float]:
        model.eval()
        device = next(model.parameters()).device
        tokens = model.sample(model.text.encode(self.eval_prompts).to(device), SamplingConfig(seed=step))
        images = self.tokenizer.decode(tokens).clamp(-1, 1).cpu()
        save_grid(images, Path(out_dir) / "samples" / f"samples_{step:06d}.png", captions=self.eval_prompts)
        val_tokens, val_text = self.tokens[self.val].to(device), self.text_ids[self.val].to(device)
        losses = model(model.model_input(val_tokens), val_text)
        return {f"val_{k}": float(v) for k, v in losses.items()}

    def checkpoint_extra(self) -> dict[str, Any]:
        return self.extra


def _saved_text(out: Path, text_length: int | None) -> TextTokenizer:
    """A resumed run's vocabulary: its checkpoint's own (``text_length`` may only repeat it)."""
    text = TextTokenizer.from_dict(checkpoint.read_config(out / "model")["context"]["text"])
    if text_length is not None and text_length != text.max_length:
        raise TrainingError(f"`resume=True`: the run's text length is {text.max_length}, not `text_length={text_length}`")
    return text


def _built_text(captions: list[str], text_length: int | None) -> TextTokenizer:
    """A new run's vocabulary from its training captions; positions: ``text_length``, or the
    longest caption + eos (at most ``AUTO_TEXT_LENGTH_MAX``)."""
    if text_length is None:
        longest = max(len(words(c)) for c in captions)  # 0 when the data has no captions
        text_length = min(AUTO_TEXT_LENGTH_MAX, 1 + max(1, longest))
    return TextTokenizer.build(captions, max_length=text_length)


def _check_same_tokenizer(out: Path, tok_dir: Path) -> None:
    """A resumed run must keep training on the tokenizer it started with (same weights)."""
    recorded = (checkpoint.read_config(out / "model").get("tokenizer") or {}).get("hash")
    now = checkpoint.content_hash(tok_dir)
    if recorded and recorded != now:
        raise TrainingError(
            f"`resume=True`: {out} was trained on a tokenizer with weights hash {recorded[:12]}, but {tok_dir} "
            f"has {now[:12]}; resume with the run's own tokenizer"
        )


def budget_spec(spec: TokenSpec, budget: int | None) -> TokenSpec:
    """What a generator trained at ``budget`` models: the first ``budget`` of a promptable
    tokenizer's ordered tokens (the whole spec when None)."""
    if budget is None:
        return spec
    if not spec.ordered:
        raise ValueError(f"`budget` needs a promptable tokenizer (ordered 1D tokens); this one makes "
                         f"{'a grid of' if spec.grid else 'a fixed number of'} tokens")
    if not 1 <= budget <= spec.max_tokens:
        raise ValueError(f"`budget` must be in [1, {spec.max_tokens}] (the tokenizer's full budget), got {budget}")
    return dataclasses.replace(spec, max_tokens=budget)


def default_preset(kind: str) -> str:
    """The generator preset a ``kind`` trains with when none is named."""
    return f"{kind}-shapes"


def train_generator(
    kind: str, tokenizer: str | Path, data: str, out: Path, cfg: TrainConfig, preset: str | None = None,
    num_images: int = NUM_IMAGES, text_length: int | None = None, resume: bool = False,
    cache_dir: Path | None = None, dataset: Any = None, budget: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a ``kind`` generator (preset default ``KIND-shapes``) on the tokens of ``tokenizer``.

    The tokenized dataset is cached in ``cache_dir`` (default ``out/cache``), keyed by the
    tokenizer's content hash and the data, so generators sharing a cache tokenize only once.
    ``text_length`` (text positions, eos included) defaults to the longest training caption + eos,
    up to ``AUTO_TEXT_LENGTH_MAX``: positions no caption reaches would never be trained.
    ``dataset``: the training images when not ``data``'s train split (e.g. a ``data.InMemory`` pool
    of it shared by several runs); ``data`` still names the data and gives the evaluation prompts.
    ``budget``: on a promptable tokenizer's ordered tokens, model only the first ``budget`` (any
    prefix decodes), fixed for the run. ``overrides`` replace preset config fields, as
    ``train_tokenizer``'s do."""
    out = Path(out)
    preset = preset or default_preset(kind)
    model_kind = registry.get_preset("generator", preset).model
    if model_kind != kind:
        raise ValueError(f"preset {preset} is a {model_kind} generator, not {kind}")
    tok_dir = checkpoint.resolve_checkpoint(tokenizer)
    has_run = check_run_dir(out, resume)
    if has_run:  # checked before any work
        _check_same_tokenizer(out, tok_dir)
        trained_at = checkpoint.read_config(out / "model").get("budget")
        if trained_at != budget:
            raise ValueError(f"`resume=True`: {out} was trained at budget {trained_at or 'full'}; resume with the same `budget`")
        text = _saved_text(out, text_length)
    if cfg.random_crop:
        raise ValueError("`random_crop` applies to tokenizers and decoders: a generator learns whole images with their captions")
    init_distributed()
    tok = checkpoint.load(tok_dir, kind="tokenizer")
    spec = budget_spec(tok.spec, budget)
    registry.model_class("generator", kind).check_spec(spec)  # before minutes of tokenizing
    if dataset is None:
        dataset = load_dataset(data, split="train", size=tok.image_size, seed=cfg.seed)
    n = min(num_images + VAL_ITEMS, len(dataset))
    if n <= VAL_ITEMS:
        raise ValueError(f"{data} has {len(dataset)} training images; a generator needs more than {VAL_ITEMS}")
    tokens, captions = tokenize_dataset(tok, dataset, n, cache_dir or out / "cache", data_key=repr(dataset), budget=budget)
    if not has_run:
        text = _built_text(captions, text_length)
    torch.manual_seed(cfg.seed)
    generator = registry.build("generator", preset, spec=spec, text=text, **(overrides or {}))
    generator.fit(tokens[: len(captions) - VAL_ITEMS])  # a resumed run loads what this measured
    val = load_dataset(data, split="val", size=tok.image_size, seed=cfg.seed)
    prompts = [val[i]["caption"] for i in range(min(EVAL_PROMPTS, len(val)))]
    extra = {"tokenizer": checkpoint.tokenizer_record(tok_dir), "data": data, "budget": budget}
    task = GeneratorTask(generator, tok, tokens, captions, prompts, extra)
    if not has_run:
        out.mkdir(parents=True, exist_ok=True)
        text.save(out / "text.json")  # for reading; the checkpoint carries its own copy
    return train(task, cfg, out, resume=resume)
