"""Shared fixtures: tiny models so the suite runs in minutes on 2 CPU cores, hermetically."""

import os

import pytest
import torch

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
