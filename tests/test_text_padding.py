"""A prompt's padding is never attended: the same caption padded to different lengths gives the same
loss and the same sample for every generator that reads the prompt through its encoder (Parti, Muse,
diffusion with either denoiser). DALL-E is not here: its causal [text; image] sequence always has
the full ``max_length`` prefix, pads included, so there is no other padding to compare with."""

import pytest
import torch

from trilemma import registry
from trilemma.data.text import TextTokenizer
from trilemma.generators.sampling import SamplingConfig as S
from trilemma.tokens import Tokens, TokenSpec

CAPTIONS = ["a large red circle at the top left", "a blue square", ""]  # 9, 4 and 1 real tokens (eos included)
TEXT = TextTokenizer.build(CAPTIONS, max_length=16)
DISCRETE = TokenSpec("discrete", 16, vocab_size=32, grid=(4, 4))
CONTINUOUS = TokenSpec("continuous", 16, latent_dim=4, grid=(4, 4))
MODELS = {
    "parti": ("parti-tiny", DISCRETE, {}),
    "muse": ("muse-tiny", DISCRETE, {}),
    "diffusion-unet": ("diffusion-tiny", CONTINUOUS, {}),
    "diffusion-mmdit": ("diffusion-tiny", CONTINUOUS, dict(denoiser="mmdit", width=32, heads=2, depth=2)),
}


def padded_two_ways():
    """The captions as the generator's tokenizer pads them (to 16) and as a tokenizer of the same
    vocabulary with room for the longest caption only pads them (to 9)."""
    long, short = TEXT.encode(CAPTIONS), TextTokenizer(TEXT.vocab, max_length=9).encode(CAPTIONS)
    assert torch.equal(long[:, :9], short) and (long[:, 9:] == TEXT.pad_id).all()
    return long, short


def tokens(spec):
    g = torch.Generator().manual_seed(1)
    if spec.kind == "discrete":
        return Tokens(ids=torch.randint(spec.vocab_size, (3, 16), generator=g))
    return Tokens(latents=torch.randn(3, 16, 4, generator=g))


@pytest.mark.parametrize("model", MODELS)
def test_padding_changes_neither_the_loss_nor_the_sample(model):
    preset, spec, cfg = MODELS[model]
    torch.manual_seed(0)
    gen = registry.build("generator", preset, spec=spec, text=TEXT, **cfg).eval()  # eval: no caption dropout
    long, short = padded_two_ways()

    def loss(ids):
        torch.manual_seed(5)  # the same mask (Muse) or noise and timesteps (diffusion) for both paddings
        with torch.no_grad():
            return gen.loss(tokens(spec), ids)["loss"]

    assert torch.allclose(loss(long), loss(short), rtol=1e-5, atol=1e-6)
    a, b = gen.sample(long, S(seed=3, steps=4)), gen.sample(short, S(seed=3, steps=4))
    if spec.kind == "discrete":
        assert torch.equal(a.ids, b.ids)
    else:
        assert torch.allclose(a.latents, b.latents, rtol=1e-4, atol=1e-5)


def test_parti_reads_the_padding_mask_through_its_kv_cache():
    torch.manual_seed(0)
    gen = registry.build("generator", "parti-tiny", spec=DISCRETE, text=TEXT)
    long, short = padded_two_ways()
    drawn = [gen.sample(ids, S(seed=3), use_cache=cached).ids for ids in (long, short) for cached in (True, False)]
    assert all(torch.equal(drawn[0], d) for d in drawn[1:])


def test_a_prompt_of_padding_only_is_refused_naming_the_argument():
    gen = registry.build("generator", "muse-tiny", spec=DISCRETE, text=TEXT)
    with pytest.raises(ValueError, match=r"^`text_ids` has a row of padding only"):
        gen.sample(torch.zeros(1, 16, dtype=torch.long), S(seed=0))  # nothing to attend: NaN otherwise
