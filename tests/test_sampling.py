"""Pure sampling functions: filters, guidance, seeded determinism, conditioning dropout."""

import pytest
import torch

from trilemma.generators.sampling import (
    SamplingConfig, cfg_combine, drop_condition, make_generator, mask_schedule, masked_count, remask_least_confident,
    sample_logits, top_k_filter, top_p_filter,
)


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False]]
    draws = sample_logits(logits.expand(2000, -1), temperature=5.0, top_k=2, generator=make_generator(0))
    assert set(draws.tolist()) == {1, 3}


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(top_p_filter(probs.log(), 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(probs.log(), 0.01)).sum() == 1  # the argmax always survives
    assert torch.isfinite(top_p_filter(probs.log(), 1.0)).all()


def test_greedy_and_seeded_sampling():
    logits = torch.randn(8, 50)
    assert torch.equal(sample_logits(logits, temperature=0), logits.argmax(-1))
    a = sample_logits(logits, generator=make_generator(3))
    b = sample_logits(logits, generator=make_generator(3))
    c = sample_logits(logits, generator=make_generator(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampling_follows_the_distribution():
    logits = torch.tensor([0.0, 1.0, 2.0]).log_softmax(0)
    probs = logits.softmax(0)
    draws = sample_logits(logits.expand(20000, -1), generator=make_generator(0))
    freq = torch.bincount(draws, minlength=3).float() / 20000
    assert torch.allclose(freq, probs, atol=0.015)


def test_cfg_convention():
    cond, uncond = torch.tensor([2.0]), torch.tensor([1.0])
    assert cfg_combine(cond, uncond, 1.0).item() == 2.0  # 1 = plain conditional
    assert cfg_combine(cond, uncond, 0.0).item() == 1.0  # 0 = unconditional
    assert cfg_combine(cond, uncond, 3.0).item() == 4.0  # > 1 extrapolates away from uncond


def test_condition_dropout_rate_is_what_was_asked():
    text = torch.ones(20000, 5, dtype=torch.long)
    null = torch.zeros(5, dtype=torch.long)
    for p in (0.0, 0.1, 0.5):
        ids, dropped = drop_condition(text, null, p, generator=make_generator(0))
        rate = dropped.float().mean().item()
        assert abs(rate - p) < 0.01
        assert torch.equal(ids[dropped], torch.zeros_like(ids[dropped]))
        assert torch.equal(ids[~dropped], text[~dropped])


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5), dict(cfg_scale=-2), dict(steps=0),
                                 dict(budget=0), dict(seed=-1), dict(scheduler="euler")])
def test_out_of_range_sampling_options_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingConfig(**bad)


def test_mask_schedules_go_from_all_to_none():
    for kind in ("cosine", "linear", "square"):
        assert mask_schedule(0.0, kind).item() == pytest.approx(1.0)
        assert mask_schedule(1.0, kind).item() == pytest.approx(0.0, abs=1e-6)
        r = torch.linspace(0, 1, 11)
        assert (mask_schedule(r, kind).diff() <= 0).all()


def test_masked_count_follows_the_schedule_and_always_progresses():
    total, steps = 64, 8
    left, counts = total, []
    for step in range(steps):
        left = masked_count(step, steps, total, left)
        counts.append(left)
    assert counts[-1] == 0 and all(a > b for a, b in zip([total] + counts, counts))
    assert counts[0] == int(total * mask_schedule(1 / steps).item())  # cos(pi/16) * 64 -> 62
    # more steps than tokens: still one token fixed per step at least
    left = 3
    for step in range(10):
        nxt = masked_count(step, 10, 3, left)
        assert nxt < left or left == 0
        left = nxt
        if left == 0:
            break
    assert left == 0


def test_remask_keeps_the_most_confident_and_never_reopens_fixed_tokens():
    conf = torch.tensor([[0.9, 0.1, 0.5, 0.01, 0.7]])
    masked = torch.tensor([[True, True, True, False, True]])  # position 3 was fixed earlier
    out = remask_least_confident(conf, masked, count=2)
    assert out.tolist() == [[False, True, True, False, False]]  # 0.1 and 0.5 stay masked; 0.01 is fixed
    assert remask_least_confident(conf, masked, count=0).sum() == 0
    # with choice noise the selection is random but seeded, and still only among sampled positions
    g1, g2 = make_generator(5), make_generator(5)
    a = remask_least_confident(conf.repeat(64, 1), masked.repeat(64, 1), 2, noise=4.5, generator=g1)
    b = remask_least_confident(conf.repeat(64, 1), masked.repeat(64, 1), 2, noise=4.5, generator=g2)
    assert torch.equal(a, b) and (a.sum(1) == 2).all() and not a[:, 3].any()
    assert len({tuple(r) for r in a.tolist()}) > 1
