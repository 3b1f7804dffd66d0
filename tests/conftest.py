"""Shared fixtures: tiny models so the suite runs in minutes on 2 CPU cores, hermetically."""

import os

import pytest
import torch

from trilemma.tokens import Tokens

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may touch the network
# One thread: on a shared 2-core machine OpenMP spin-waits make two threads 10-600x slower.
torch.set_num_threads(1)

# Tiny overrides that keep any tokenizer preset's structure but shrink it to test size.
TINY_TOKENIZER = dict(channels=8, image_size=32)


@pytest.fixture
def tiny_vq():
    from trilemma import registry

    torch.manual_seed(0)
    return registry.build("tokenizer", "vq-f4-shapes", channels=8, quantizer={"name": "vq", "codebook_size": 16, "codebook_dim": 4})


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.rand(4, 3, 32, 32) * 2 - 1


def fixed_loss(gen, tokens, text_ids) -> float:
    """A generator's loss on one batch with the same noise, masks and timesteps every time (a
    deterministic yardstick for a stochastic loss), summed over 8 draws."""
    gen.eval()
    torch.manual_seed(123)
    with torch.no_grad():
        return sum(gen.loss(tokens, text_ids)["loss"].item() for _ in range(8))


def fit_batch(gen, tokens, text_ids, steps: int, lr: float = 3e-3) -> dict:
    """``steps`` of AdamW on one batch; the last step's outputs."""
    opt = torch.optim.AdamW(gen.parameters(), lr=lr)
    torch.manual_seed(0)
    for _ in range(steps):
        gen.train()
        out = gen.loss(tokens, text_ids)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return out


def spy_prompts(tok, monkeypatch, field: str) -> tuple[list[bool], list[tuple[int, bool, bool]]]:
    """Record what a region study sends through ``tok``: per encode whether the prompt carried
    ``field`` ("boxes" or "points"), per decode (tokens, whether its ids came from a prompted
    encoding, whether the decoder's prompt carries ``field``). The ids are replaced by that flag."""
    encode, decode = tok.encode, tok.decode
    encoded, decoded = [], []

    def spy_encode(x, prompt=None):
        prompted = prompt is not None and getattr(prompt, field) is not None
        encoded.append(prompted)
        tokens = encode(x, prompt)
        return Tokens(ids=torch.full_like(tokens.ids, int(prompted)), prompt=tokens.prompt)

    def spy_decode(tokens):
        decoded.append((tokens.num_tokens, bool(tokens.ids[0, 0]), getattr(tokens.prompt, field) is not None))
        return decode(tokens)

    monkeypatch.setattr(tok, "encode", spy_encode)
    monkeypatch.setattr(tok, "decode", spy_decode)
    return encoded, decoded
