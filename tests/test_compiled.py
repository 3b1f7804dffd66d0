"""Sampling through torch.compile'd steps (``Generator.compile_steps``): the same tokens as eager at
fp32; refused by a family without a step to compile; a backend that cannot compile says what it
lacks."""

import pytest
import torch
from torch import nn

from trilemma import registry
from trilemma.data.text import TextTokenizer
from trilemma.generators.sampling import SamplingConfig
from trilemma.nn import compiled
from trilemma.tokens import TokenSpec

CAPTIONS = ["a large red circle at the top left", "a small blue square in the center"]
GRID = TokenSpec("discrete", 16, vocab_size=32, grid=(4, 4))


def tiny(preset: str, spec: TokenSpec = GRID):
    text = TextTokenizer.build(CAPTIONS, max_length=10)
    torch.manual_seed(0)
    return registry.build("generator", preset, spec=spec, text=text), text.encode(CAPTIONS)


@pytest.mark.slow  # one compile of DALL-E's decode step: ~20 s on 2 shared cores
def test_compiled_sampling_draws_the_same_tokens_as_eager():
    reason = compiled.unavailable("cpu")
    if reason is not None:
        pytest.skip(reason)
    gen, ids = tiny("dalle-tiny")
    sampling = SamplingConfig(seed=3, top_k=8, cfg_scale=2.0)
    eager = gen.sample(ids, sampling).ids
    assert torch.equal(gen.compile_steps().sample(ids, sampling).ids, eager)
    assert torch.equal(gen.compile_steps(False).sample(ids, sampling).ids, eager)


def test_a_family_without_a_compiled_step_refuses_compile():
    gen, _ = tiny("diffusion-tiny", TokenSpec("continuous", 16, latent_dim=4, grid=(4, 4)))
    with pytest.raises(ValueError, match=r"diffusion cannot take `compile=True`: .*\(dalle, mar, muse, parti can\)"):
        gen.compile_steps()
    assert gen.compile_steps(False).compiled_steps is False


class Doubler(nn.Module):
    def double(self, x: torch.Tensor) -> torch.Tensor:
        return x.sin() * 2 + 1


def test_a_backend_that_cannot_compile_names_what_is_missing(monkeypatch):
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported here")
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", ("no-such-compiler",))
    monkeypatch.setattr(inductor, "fx_graph_cache", False)  # a cached kernel would need no compiler
    torch._dynamo.reset()
    with pytest.raises(RuntimeError) as err:
        compiled.call(Doubler().double, torch.randn(5))
    message = str(err.value)
    assert "\n" not in message and "no-such-compiler" in message and "C++ compiler" in message
    assert "without `compile=True`" in message
    assert compiled.unavailable("cpu") is not None
    torch._dynamo.reset()
