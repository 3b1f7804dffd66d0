"""Editing a region (--init / --box) and reranking by a contrastive score (--rerank)."""

import pytest
import torch

from trilemma import registry
from trilemma.data.text import TextTokenizer
from trilemma.generators.sampling import SamplingConfig as S
from trilemma.pipeline import Pipeline
from trilemma.tokens import TokenSpec

CAPTIONS = ["a large red circle at the top left", "a small blue square in the center"]
EDITORS = ["dalle", "parti", "muse"]


def tiny_generator(name, spec):
    torch.manual_seed(0)
    return registry.build("generator", f"{name}-tiny", spec=spec, text=TextTokenizer.build(CAPTIONS, max_length=10))


@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("name", EDITORS)
def test_known_ids_are_kept_and_only_the_rest_is_drawn(name, levels):
    spec = TokenSpec("discrete", 16, vocab_size=32, grid=(4, 4), levels=levels)
    gen = tiny_generator(name, spec)
    text_ids = gen.text.encode(CAPTIONS)
    known = torch.randint(32, (2, 16 * levels), generator=torch.Generator().manual_seed(0))
    redraw = torch.zeros(16 * levels, dtype=torch.bool)
    redraw[5 * levels : 7 * levels] = True  # two cells in the middle: tokens before and after them are kept
    known[:, redraw] = -1
    tokens = gen.sample(text_ids, S(seed=0, cfg_scale=2.0), known=known)
    assert tuple(tokens.ids.shape) == ((2, 16, levels) if levels > 1 else (2, 16))  # the tokenizer's layout
    drawn = gen.flat_ids(tokens)
    assert torch.equal(drawn[:, ~redraw], known[:, ~redraw])
    assert (drawn[:, redraw] >= 0).all() and (drawn[:, redraw] < 32).all()
    # Drawn, not filled in: another seed keeps the same known ids and draws other ids in the region
    # (an untrained model is near uniform over 32 ids: two seeds agree on an id about 1 time in 32).
    other = gen.flat_ids(gen.sample(text_ids, S(seed=1, cfg_scale=2.0), known=known))
    assert torch.equal(other[:, ~redraw], known[:, ~redraw])
    assert (other[:, redraw] != drawn[:, redraw]).float().mean() >= 0.5


@pytest.mark.parametrize("name", EDITORS)
def test_known_ids_of_the_wrong_shape_or_with_a_budget_are_refused(name):
    gen = tiny_generator(name, TokenSpec("discrete", 16, vocab_size=32, grid=(4, 4)))
    text_ids = gen.text.encode(CAPTIONS)
    with pytest.raises(ValueError, match="`known` ids must be"):
        gen.sample(text_ids, S(seed=0), known=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="`known` ids must be -1 or in"):
        gen.sample(text_ids, S(seed=0), known=torch.full((2, 16), 99))


def test_pipeline_edit_redraws_the_box_cells_and_keeps_the_rest(tiny_vq, images):
    spec = tiny_vq.spec
    pipe = Pipeline(tiny_vq.eval(), tiny_generator("muse", spec))
    known = pipe.known_ids(images[:1], (0.0, 0.0, 0.5, 0.25))  # the top-left 4 x 2 of the 8 x 8 grid
    grid = (known[0] == -1).view(8, 8)
    assert grid[:2, :4].all() and grid.sum() == 8
    decoded = []
    decode = tiny_vq.decode
    tiny_vq.decode = lambda tokens: decoded.append(tokens.ids) or decode(tokens)
    out = pipe(CAPTIONS, S(seed=0), known=known)
    assert out.shape == (2, 3, 32, 32)
    ids = decoded[0].flatten(1)
    assert torch.equal(ids[:, ~grid.flatten()], known[:, ~grid.flatten()].expand(2, -1))
    with pytest.raises(ValueError, match="x0 < x1"):
        pipe.known_ids(images[:1], (0.5, 0.0, 0.2, 1.0))


class _Scorer:
    """Scores an image by its mean red channel whatever the prompt: the best of N is the reddest."""

    def encode_images(self, x):
        return torch.stack([x[:, 0].mean((1, 2)), torch.ones(len(x))], 1)

    def encode_text(self, captions):
        return torch.tensor([[1.0, 0.0]]).expand(len(captions), -1)


def test_best_of_keeps_the_candidate_the_scorer_ranks_highest(tiny_vq, images):
    tiny_vq.eval().encode(images)  # k-means fills the codebook (all zeros before: every id would decode alike)
    pipe = Pipeline(tiny_vq, tiny_generator("dalle", tiny_vq.spec))
    sampling = S(seed=3)
    candidates = torch.stack([pipe(CAPTIONS, sampling.for_chunk(c * 2)) for c in range(4)], 1)  # [2, 4, 3, H, W]
    best, scores = pipe.best_of(CAPTIONS, 4, _Scorer(), sampling)
    reds = candidates[:, :, 0].mean((2, 3))
    assert torch.allclose(scores, reds.max(1).values, atol=1e-5)
    assert torch.equal(best, candidates[torch.arange(2), reds.argmax(1)])
    assert torch.equal(candidates[:, 0], pipe(CAPTIONS, sampling))  # one sample at the same seed is a candidate
    assert not torch.equal(candidates[:, 0], candidates[:, 1])
