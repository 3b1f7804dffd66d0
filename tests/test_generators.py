"""Every registered generator on every kind of discrete token layout: grid, residual depth, 1D."""

import pytest
import torch

from trilemma import checkpoint, registry
from trilemma.data.text import TextTokenizer
from trilemma.generators.sampling import SamplingConfig as S
from trilemma.tokens import Tokens, TokenSpec

SPECS = {
    "grid": TokenSpec("discrete", 16, vocab_size=32, grid=(4, 4)),
    "residual": TokenSpec("discrete", 9, vocab_size=16, grid=(3, 3), levels=3),
    "sequence": TokenSpec("discrete", 12, vocab_size=24),
    "multiscale": TokenSpec("discrete", 21, vocab_size=16, scales=(1, 2, 4)),
}
GENERATORS = [n for n in registry.names("generator") if "discrete" in registry.model_class("generator", n).accepts]


def fits(name, spec):
    try:
        registry.model_class("generator", name).check_spec(spec)
    except ValueError:
        return False
    return True


def spec_for(name, layout):
    """SPECS[layout] where the generator models it, else the first layout it does (var: multiscale)."""
    return SPECS[layout] if fits(name, SPECS[layout]) else next(s for s in SPECS.values() if fits(name, s))


PAIRS = [(name, layout) for name in GENERATORS for layout in SPECS if fits(name, SPECS[layout])]
CAPTIONS = ["a large red circle at the top left", "a small blue square in the center", "a large green cross on the left"]


def tiny(name, spec):
    text = TextTokenizer.build(CAPTIONS, max_length=10)
    torch.manual_seed(0)
    return registry.build("generator", f"{name}-tiny", spec=spec, text=text), text


def tiny_with_prompts(name, layout):
    """A tiny generator on one of SPECS' layouts, its spec, and CAPTIONS as text ids."""
    spec = SPECS[layout]
    gen, text = tiny(name, spec)
    return gen, spec, text.encode(CAPTIONS)


def random_tokens(spec, b):
    shape = (b, spec.max_tokens, spec.levels) if spec.levels > 1 else (b, spec.max_tokens)
    return Tokens(ids=torch.randint(spec.vocab_size, shape, generator=torch.Generator().manual_seed(1)))


AUTOREGRESSIVE = [n for n in GENERATORS if n in ("dalle", "parti")]
CACHED = [n for n in GENERATORS if n in ("dalle", "parti", "var")]  # sample(use_cache=False) recomputes


@pytest.mark.parametrize("name, layout", [(n, layout) for n, layout in PAIRS if n in CACHED])
def test_cached_sampling_equals_uncached(name, layout):
    gen, _, ids = tiny_with_prompts(name, layout)
    for cfg_scale in (1.0, 2.5):
        a = gen.sample(ids, S(temperature=0, cfg_scale=cfg_scale), use_cache=True)
        b = gen.sample(ids, S(temperature=0, cfg_scale=cfg_scale), use_cache=False)
        assert torch.equal(a.ids, b.ids)
    a = gen.sample(ids, S(seed=5, top_k=8, cfg_scale=2.0), use_cache=True)
    assert torch.equal(a.ids, gen.sample(ids, S(seed=5, top_k=8, cfg_scale=2.0), use_cache=False).ids)


@pytest.mark.parametrize("name, layout", PAIRS)
def test_samples_are_valid_ids_and_seeded_sampling_repeats(name, layout):
    gen, spec, ids = tiny_with_prompts(name, layout)
    for options in ({"temperature": 0}, {"temperature": 0, "cfg_scale": 2.5}, {"seed": 3, "top_p": 0.9, "cfg_scale": 3.0}):
        out = gen.sample(ids, S(**options))
        assert out.ids.shape == random_tokens(spec, 3).ids.shape
        assert out.ids.min() >= 0 and out.ids.max() < spec.vocab_size  # never a [MASK] or BOS id
    s1 = gen.sample(ids, S(seed=7, top_k=5))
    s2 = gen.sample(ids, S(seed=7, top_k=5))
    assert torch.equal(s1.ids, s2.ids)


@pytest.mark.parametrize("name", GENERATORS)
def test_loss_falls_when_fitting_a_batch(name):
    spec = spec_for(name, "residual")
    gen, text = tiny(name, spec)
    tokens, ids = random_tokens(spec, 3), text.encode(CAPTIONS)
    opt = torch.optim.AdamW(gen.parameters(), lr=3e-3)
    gen.train()
    losses = []
    # A masked generator sees a random mask each step (a noisy loss): it gets more steps.
    for _ in range(60 if name in CACHED else 250):
        loss = gen.loss(tokens, ids)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    # and greedy sampling now reproduces the memorised tokens for their prompts (chance: 1/16)
    sampled = gen.sample(ids, S(temperature=0, cfg_scale=1.0))
    assert (sampled.ids == tokens.ids).float().mean() > (0.9 if name in CACHED else 0.8)


@pytest.mark.parametrize("name", GENERATORS)
def test_checkpoint_round_trip_keeps_spec_and_text(name, tmp_path):
    gen, text = tiny(name, spec_for(name, "grid"))
    loaded = checkpoint.load(checkpoint.save(gen, tmp_path / "g"), kind="generator")
    assert loaded.spec == gen.spec and loaded.text.to_dict() == text.to_dict()
    ids = text.encode(CAPTIONS[:1])
    assert torch.equal(gen.sample(ids, S(temperature=0)).ids, loaded.sample(ids, S(temperature=0)).ids)


@pytest.mark.parametrize("name", GENERATORS)
def test_continuous_tokens_are_refused_with_advice(name):
    with pytest.raises(ValueError, match="continuous"):
        tiny(name, TokenSpec("continuous", 16, latent_dim=4, grid=(4, 4)))


def test_sampling_takes_a_checked_sampling_config():
    gen, text = tiny("dalle", SPECS["grid"])
    with pytest.raises(TypeError, match="SamplingConfig"):
        gen.sample(text.encode(CAPTIONS[:1]), {"temperature": 1.0})
    with pytest.raises(ValueError, match="top_p"):
        S(top_p=1.5)


@pytest.mark.parametrize("name", AUTOREGRESSIVE)
def test_a_budget_draws_a_prefix_of_ordered_1d_tokens_and_is_checked_against_them(name):
    gen, text = tiny(name, SPECS["sequence"])
    ids = text.encode(CAPTIONS)
    full = gen.sample(ids, S(seed=2, cfg_scale=2.0))
    for k in (1, 5, 12):
        assert torch.equal(gen.sample(ids, S(seed=2, cfg_scale=2.0, budget=k)).ids, full.ids[:, :k])  # drawn in order
    with pytest.raises(ValueError, match="`sampling.budget` needs ordered 1D tokens .* 1 <= budget <= 12; got 13 for 1D"):
        gen.sample(ids, S(budget=13))
    with pytest.raises(ValueError, match="`known` does not combine with `sampling.budget`"):
        gen.sample(ids, S(budget=4), known=torch.full((3, 12), -1))
    with pytest.raises(ValueError, match="`sampling.budget` needs ordered 1D tokens .* for grid tokens"):
        tiny(name, SPECS["grid"])[0].sample(ids, S(budget=4))


CONTINUOUS = TokenSpec("continuous", 16, latent_dim=4, grid=(4, 4))


@pytest.mark.parametrize("name", registry.names("generator"))
def test_what_a_family_cannot_take_is_refused_naming_the_generator_and_the_argument(name):
    cls = registry.model_class("generator", name)
    expected = {"dalle": (True, True), "parti": (True, True), "muse": (False, True), "diffusion": (False, False),
                "var": (False, True), "mar": (False, False)}
    assert (cls.takes_budget, cls.edits) == expected.get(name, (cls.takes_budget, cls.edits))
    gen, text = tiny(name, spec_for(name, "grid") if "discrete" in cls.accepts else CONTINUOUS)
    ids = text.encode(CAPTIONS[:2])
    able = {c: ", ".join(n for n in registry.names("generator") if getattr(registry.model_class("generator", n), c))
            for c in ("takes_budget", "edits")}
    if not cls.takes_budget:
        with pytest.raises(ValueError, match=rf"^{name} cannot take `sampling.budget`: .* \({able['takes_budget']} can\)$"):
            gen.sample(ids, S(budget=4))
    if not cls.edits:
        with pytest.raises(ValueError, match=rf"^{name} cannot take `known`: .* \({able['edits']} can\)$"):
            gen.sample(ids, S(), known=torch.full((2, 16), -1))


def test_masked_training_masks_the_scheduled_fraction():
    gen, text = tiny("muse", SPECS["grid"])
    tokens, ids = random_tokens(SPECS["grid"], 3), text.encode(CAPTIONS)
    torch.manual_seed(0)
    fractions = torch.tensor([gen.loss(tokens, ids)["masked_fraction"].item() for _ in range(400)])
    # fraction = ceil(16 cos(pi r / 2)) / 16, r ~ U(0, 1): mean about 2/pi + 1/32, never 0
    assert fractions.min() >= 1 / 16 and fractions.max() <= 1
    assert abs(fractions.mean().item() - (2 / torch.pi + 1 / 32)) < 0.04


def test_masked_decoding_runs_the_requested_number_of_steps():
    gen, text = tiny("muse", SPECS["grid"])
    calls = []
    gen.transformer.register_forward_hook(lambda *a: calls.append(1))
    gen.sample(text.encode(CAPTIONS), S(steps=5, cfg_scale=2.0, seed=0))
    assert len(calls) == 5  # one stacked (conditional + unconditional) pass per step


def test_a_cross_only_cache_computes_the_prompts_keys_once_and_changes_no_output():
    from trilemma.nn.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    net, context = Transformer(TransformerConfig(32, 2, 2), context_dim=32).eval(), torch.randn(2, 5, 32)
    calls = []
    net.blocks[0].cross.kv.register_forward_hook(lambda *a: calls.append(1))
    cache = net.new_cache(cross_only=True)
    for _ in range(3):  # a sequence rerun each step (Muse, MAR), the prompt fixed
        x = torch.randn(2, 7, 32)
        cached = net(x, context=context, cache=cache)
        assert torch.equal(cached, net(x, context=context))
    assert len(calls) == 1 + 3 and cache.length == 0  # once with the cache, then once per uncached call


@pytest.mark.parametrize("name", registry.names("generator"))
def test_every_family_samples_under_bf16_autocast_through_a_pipeline(name):
    from trilemma.pipeline import Pipeline

    cls = registry.model_class("generator", name)
    preset = "msvq-tiny" if name == "var" else "ae-f4-shapes" if "discrete" not in cls.accepts else "vq-f4-shapes"
    torch.manual_seed(0)
    tok = registry.build("tokenizer", preset, channels=8) if preset != "msvq-tiny" else registry.build("tokenizer", preset)
    text = TextTokenizer.build(CAPTIONS, max_length=10)
    gen = registry.build("generator", f"{name}-tiny", spec=tok.spec, text=text)
    if hasattr(gen, "latent_mean"):
        gen.fit(tok.encode(torch.rand(4, 3, 32, 32) * 2 - 1))
    fp32, bf16 = Pipeline(tok, gen), Pipeline(tok, gen, precision="bf16")
    a, b = fp32(CAPTIONS[:2], S(seed=0, temperature=0)), bf16(CAPTIONS[:2], S(seed=0, temperature=0))
    assert a.shape == b.shape == (2, 3, 32, 32) and b.dtype == torch.float32 and torch.isfinite(b).all()
    with pytest.raises(ValueError, match="`precision` must be one of fp32, bf16, fp16"):
        Pipeline(tok, gen, precision="int8")
