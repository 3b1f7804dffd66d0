"""The small CLIP: it learns to match shapes captions, scores pairs, ranks captions, checkpoints."""

import functools
import tempfile
from pathlib import Path

import pytest
import torch

from trilemma import checkpoint, registry
from trilemma.data import TextTokenizer, load_dataset
from trilemma.metrics.contrastive import ContrastiveModel
from trilemma.training.scorers import contrastive_config, train_contrastive


def _trained(dataset, cfg, **kwargs) -> ContrastiveModel:
    out = Path(tempfile.mkdtemp()) / "contrastive"
    train_contrastive(out, dataset, cfg, **kwargs)
    return checkpoint.load(out / "model", kind="features").eval()


@functools.cache
def quick_model() -> ContrastiveModel:
    """80 steps of 64 pairs (~12 s on one busy core): ~99% R-precision@32 on held-out shapes."""
    return _trained(load_dataset("shapes", "train"), contrastive_config(steps=80, batch_size=64))


@functools.cache
def held_out(n: int = 256):
    data = load_dataset("shapes", "test", length=n)
    items = [data[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), [it["caption"] for it in items]


def test_real_pairs_score_higher_than_shuffled_pairs():
    images, captions = held_out()
    model = quick_model()
    real = model.clip_score(images, captions)
    shuffled = model.clip_score(images, captions[1:] + captions[:1])
    assert real > shuffled + 30, (real, shuffled)
    sims = model.similarity(images, captions)
    assert sims.shape == (len(images),) and (sims.abs() <= 1 + 1e-5).all()


def test_r_precision_is_well_above_chance():
    images, captions = held_out()
    model = quick_model()
    r = model.r_precision(images, captions, candidates=32)
    assert r > 0.7, r  # chance is 1/32
    assert model.r_precision(images, captions, candidates=32) == r  # seeded distractors
    assert model.r_precision(images, captions[1:] + captions[:1], candidates=32) < 0.2


def test_r_precision_on_crafted_embeddings(monkeypatch):
    model = quick_model()
    n = 10
    eye = torch.eye(n)
    monkeypatch.setattr(model, "_embed", lambda images, captions, batch_size: (eye, eye))
    assert model.r_precision(torch.zeros(n, 3, 32, 32), ["x"] * n, candidates=5) == 1.0
    # Every caption equally close to every image: a tie is not a win.
    flat = torch.ones(n, 4) / 2
    monkeypatch.setattr(model, "_embed", lambda images, captions, batch_size: (flat, flat))
    assert model.r_precision(torch.zeros(n, 3, 32, 32), ["x"] * n, candidates=5) == 0.0


def test_bad_arguments_name_the_problem():
    images, captions = held_out()
    model = quick_model()
    with pytest.raises(ValueError, match="candidates must be in"):
        model.r_precision(images[:4], captions[:4], candidates=5)
    with pytest.raises(ValueError, match="4 images but 3 captions"):
        model.clip_score(images[:4], captions[:3])


def test_checkpoint_round_trip_keeps_text_vocabulary(tmp_path):
    model = quick_model()
    assert "contrastive" in registry.names("features")
    checkpoint.save(model, tmp_path / "clip")
    loaded = checkpoint.load(tmp_path / "clip", kind="features")
    assert isinstance(loaded, ContrastiveModel) and loaded.text.vocab == model.text.vocab
    images, captions = held_out()
    assert torch.equal(loaded.similarity(images[:16], captions[:16]), model.similarity(images[:16], captions[:16]))


def test_trains_on_any_captioned_dataset():
    # A plain list of items with a given vocabulary: nothing shapes-specific is required.
    data = [{"image": torch.rand(3, 16, 16) * 2 - 1, "caption": f"photo number {i % 3}"} for i in range(6)]
    text = TextTokenizer.build([d["caption"] for d in data], max_length=8)
    tiny = ContrastiveModel.Config(image_size=16, channels=(8,), image_dim=16, text_dim=16, text_depth=1,
                                   text_heads=2, embed_dim=8)
    model = _trained(data, contrastive_config(steps=2, batch_size=4), text=text, config=tiny)
    assert model.text.vocab == text.vocab and 0 <= model.r_precision(torch.stack([d["image"] for d in data]),
                                                        [d["caption"] for d in data], candidates=3) <= 1


def test_a_caption_padded_to_another_length_embeds_the_same():
    captions = ["a small red circle at the top left", "a large blue square"]
    long, short = TextTokenizer.build(captions, max_length=16), TextTokenizer.build(captions, max_length=10)
    torch.manual_seed(0)
    model = ContrastiveModel(ContrastiveModel.Config(channels=(8,), image_dim=16), text=long).eval()
    padded = model.encode_text(captions)
    model.text = short
    assert torch.allclose(padded, model.encode_text(captions), atol=1e-6)  # pads neither attended nor pooled
