"""VAR's next-scale prediction: one pass per scale, each scale conditioned on the coarser ones only."""

import pytest
import torch

from trilemma import registry
from trilemma.data.text import TextTokenizer
from trilemma.generators.sampling import SamplingConfig as S
from trilemma.tokens import TokenSpec

SPEC = TokenSpec("discrete", 1 + 4 + 9 + 16, vocab_size=16, scales=(1, 2, 3, 4))
CAPTIONS = ["a large red circle at the top left", "a small blue square in the center"]


@pytest.fixture
def var():
    text = TextTokenizer.build(CAPTIONS, max_length=10)
    torch.manual_seed(0)
    return registry.build("generator", "var-tiny", spec=SPEC, text=text).eval(), text.encode(CAPTIONS)


def logits(gen, image_ids, text_ids):
    memory = gen.encode_text(text_ids)
    h = gen.transformer(gen._inputs(image_ids, memory), context=memory.states, context_mask=memory.mask,
                        attn_mask=gen.block_mask(image_ids.shape[1], image_ids.device))
    return gen.image_head(h)


def test_each_scale_is_predicted_from_the_coarser_scales_only(var):
    gen, text_ids = var
    ids = torch.randint(16, (2, SPEC.max_tokens), generator=torch.Generator().manual_seed(0))
    base = logits(gen, ids, text_ids)
    for k, (lo, hi) in enumerate(zip(gen.offsets[:-1], gen.offsets[1:])):
        changed = ids.clone()
        changed[:, lo:] = (changed[:, lo:] + 1) % 16  # scale k and every finer one
        out = logits(gen, changed, text_ids)
        assert torch.allclose(out[:, :hi], base[:, :hi], atol=1e-5)  # up to scale k: unaffected
        if hi < SPEC.max_tokens:
            assert not torch.allclose(out[:, hi:], base[:, hi:], atol=1e-3)  # the next scale reads them


@pytest.mark.parametrize("cfg_scale, rows", [(1.0, 2), (3.0, 4)])
def test_one_forward_pass_per_scale_with_guidance_in_the_same_batch(var, cfg_scale, rows):
    gen, text_ids = var
    batches = []
    gen.transformer.register_forward_hook(lambda module, args, kwargs_out: batches.append(args[0].shape[0]))
    gen.sample(text_ids, S(seed=0, cfg_scale=cfg_scale))
    assert batches == [rows] * len(SPEC.scales)


def test_known_ids_are_kept_and_the_rest_drawn(var):
    gen, text_ids = var
    full = gen.sample(text_ids, S(seed=1)).ids
    known = torch.full_like(full, -1)
    known[:, :5] = (full[:, :5] + 3) % 16  # the first two scales, set to other ids
    edited = gen.sample(text_ids, S(seed=1), known=known).ids
    assert torch.equal(edited[:, :5], known[:, :5])
    assert torch.equal(edited[:, 5:] >= 0, torch.ones_like(edited[:, 5:], dtype=torch.bool))  # drawn, not -1
    # (the finer scales read the kept ids: test_each_scale_is_predicted_from_the_coarser_scales_only)


def test_tokens_without_scales_are_refused_naming_the_tokenizer_to_use():
    text = TextTokenizer.build(CAPTIONS, max_length=10)
    with pytest.raises(ValueError, match="no scales: pick an msvq tokenizer"):
        registry.build("generator", "var-tiny", spec=TokenSpec("discrete", 16, vocab_size=16, grid=(4, 4)), text=text)


def test_every_preset_builds():
    text = TextTokenizer.build(CAPTIONS, max_length=10)
    for name in ("var-tiny", "var-shapes", "var-base"):
        gen = registry.build("generator", name, spec=SPEC, text=text)
        assert gen.image_len == SPEC.max_tokens
