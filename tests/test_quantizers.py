"""Quantizers: one output contract for every registered quantizer, plus the known pitfalls
(codebook collapse, bf16 autocast, residual dropout ids, VAE sampling) tested on tiny inputs."""

import dataclasses
import json
import math
import warnings

import pytest
import torch
from einops import rearrange
from torch import nn
from vector_quantize_pytorch.vector_quantize_pytorch import Codebook

from trilemma.registry import build, names
from trilemma.tokenizers import quantizers  # noqa: F401  (registers the quantizers)
from trilemma.metrics.scores import codebook_usage
from trilemma.tokenizers.quantizers import QuantizerOutput

DIM = 16
# Small configs so every test is fast; a quantizer registered later is tested with its defaults.
SMALL = {
    "vq": dict(codebook_size=32),
    "rvq": dict(codebook_size=32, num_quantizers=3),
    "lfq": dict(codebook_size=2**10),  # LFQ's entropy memory grows with the codebook: test 2^10 only
}
ALL = names("quantizer")
DISCRETE = [n for n in ALL if build("quantizer", n, dim=DIM, **SMALL.get(n, {})).discrete]


def make(name, **cfg):
    torch.manual_seed(0)
    return build("quantizer", name, dim=DIM, **{**SMALL.get(name, {}), **cfg})


def latents(q, b=4, h=8, w=8, seed=1):
    # 256 vectors: 8 per code for the 32-code test codebooks (above the dead-code threshold)
    return torch.randn(b, q.in_channels, h, w, generator=torch.Generator().manual_seed(seed))


def check_losses(out):
    for name, loss in out.losses.items():
        assert loss.shape == (), f"loss {name} is not a scalar: {tuple(loss.shape)}"
        assert torch.isfinite(loss), f"loss {name} is {loss}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ALL)
def test_output_contract(name, training):
    q = make(name).train(training)
    z = latents(q)
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert out.quantized.shape == (4, q.latent_dim, 8, 8) and out.quantized.dtype == torch.float32
    check_losses(out)
    if not q.discrete:
        assert out.ids is None and out.usage is None and q.vocab_size is None
        return
    ids_shape = (4, 8, 8) if q.levels == 1 else (4, 8, 8, q.levels)
    assert out.ids.shape == ids_shape and out.ids.dtype == torch.long
    assert out.ids.max() < q.vocab_size and out.ids.min() >= (-1 if training else 0)
    assert out.usage.shape == (q.vocab_size,) and out.usage.dtype == torch.float32
    # usage counts every valid id once (RVQ: over all levels together)
    assert out.usage.sum() == (out.ids >= 0).sum()
    assert q.in_channels == q.latent_dim == DIM


@pytest.mark.parametrize("name", ALL)
def test_gradient_reaches_input(name):
    q = make(name).train()
    z = latents(q).requires_grad_()
    out = q(z)
    weights = torch.randn_like(out.quantized)  # a non-trivial downstream loss
    ((out.quantized * weights).sum() + sum(out.losses.values(), torch.tensor(0.0))).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("name", DISCRETE)
def test_ids_to_latents_matches_quantized_in_eval(name):
    q = make(name)
    z = latents(q)
    q.train()(z)  # one training step first: k-means init and EMA updates move the codebook
    q.eval()
    out = q(z)
    decoded = q.ids_to_latents(out.ids)
    assert decoded.shape == out.quantized.shape
    torch.testing.assert_close(decoded, out.quantized, rtol=1e-5, atol=1e-5)


def test_continuous_has_no_ids_to_decode():
    q = make("none")
    with pytest.raises(TypeError, match="continuous"):
        q.ids_to_latents(torch.zeros(1, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("name", DISCRETE)
def test_ids_to_latents_rejects_out_of_range_ids(name):
    q = make(name)
    shape = (1, 2, 2) if q.levels == 1 else (1, 2, 2, q.levels)
    with pytest.raises(ValueError, match=str(q.vocab_size)):
        q.ids_to_latents(torch.full(shape, q.vocab_size, dtype=torch.long))


def test_wrong_channel_count_names_the_expected_shape():
    q = make("vq")
    with pytest.raises(ValueError, match=rf"\[B, {DIM}, H, W\].*\(2, 3, 4, 4\)"):
        q(torch.randn(2, 3, 4, 4))


def test_build_from_registry_and_config_json_round_trip():
    q = build("quantizer", "vq", dim=64, codebook_size=512)
    assert q.vocab_size == 512 and q.latent_dim == 64 and q.config.codebook_dim == 8
    for name in ALL:
        q = make(name)
        saved = json.loads(json.dumps(dataclasses.asdict(q.config)))
        assert type(q.config)(**saved) == q.config
    assert build("quantizer", "fsq", dim=DIM, levels=[8, 5, 5, 5]).vocab_size == 1000
    assert build("quantizer", "rvq", dim=DIM, num_quantizers=4).levels == 4


def _train_vq_on_clusters(steps=500, **cfg):
    """Fit encoder -> VQ -> decoder to 64 tight clusters; return codebook stats on fresh data.

    A collapsed codebook maps many clusters to one code; a healthy one gives most clusters
    their own code, so usage on the data approaches 64/64.
    """
    torch.manual_seed(0)
    centers = torch.randn(64, 16)

    def sample(n):
        return centers[torch.randint(0, 64, (n,))] + 0.05 * torch.randn(n, 16)

    enc, dec = nn.Linear(16, 32), nn.Linear(32, 16)
    q = build("quantizer", "vq", dim=32, codebook_size=64, **cfg).train()
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), *q.parameters()], lr=1e-3)
    for _ in range(steps):  # ~1.5 s on one thread
        x = sample(256)  # 4 vectors per code: a uniformly used code stays above the dead-code threshold
        out = q(rearrange(enc(x), "(b h w) d -> b d h w", h=4, w=4))
        recon = dec(rearrange(out.quantized, "b d h w -> (b h w) d"))
        loss = (recon - x).pow(2).mean() + sum(out.losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = q.eval()(rearrange(enc(sample(4096)), "(b h w) d -> b d h w", h=8, w=8))
    return {"usage": codebook_usage(counts=out.usage)}


@pytest.fixture
def one_thread():
    # 500 steps of tiny matmuls: thread hand-offs cost more than they save, and on a busy
    # 2-core machine two threads made this test 20x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_vq_codebook_usage_stays_high(one_thread):
    # defaults: k-means init, dead-code replacement, 8-d cosine codes (seen 0.95-0.98 over 8 seeds)
    assert _train_vq_on_clusters()["usage"] >= 0.9
    # the same problem without the remedies collapses onto part of the codebook (0.50-0.63),
    # so the threshold above really measures collapse avoidance
    bare = dict(kmeans_init=False, threshold_ema_dead_code=0, use_cosine_sim=False, codebook_dim=None)
    assert _train_vq_on_clusters(**bare)["usage"] <= 0.75


def test_vq_warns_when_batch_too_small_for_dead_code_threshold():
    q = build("quantizer", "vq", dim=DIM, codebook_size=512).train()
    with pytest.warns(UserWarning, match="threshold_ema_dead_code"):
        q(torch.randn(2, DIM, 4, 4))  # 32 vectors for 512 codes


def test_vq_warns_at_a_threshold_equal_to_the_vectors_per_code():
    q = build("quantizer", "vq", dim=DIM, codebook_size=512).train()
    with pytest.warns(UserWarning, match=r"2\.00 per code, not above `threshold_ema_dead_code=2\.0`: codes are re-seeded under 1\.00"):
        q(torch.randn(16, DIM, 8, 8))  # 1024 vectors for 512 codes: exactly the default threshold


@pytest.mark.parametrize("name", ["vq", "rvq"])
def test_dead_codes_are_rare_once_trained_with_two_vectors_per_code(name, monkeypatch, one_thread):
    # The promptable presets' VQ sees 1024 vectors a step for 512 codes: a uniformly used code's EMA
    # count is 2, the default threshold, so with the threshold as configured every below-average
    # code was re-seeded every step (~80 of 512 a step after 30 steps; ~0-2 with it capped at 1).
    replaced = []
    original = Codebook.replace

    def counting(self, batch_samples, batch_mask, seq_mask=None):
        replaced[-1] += int(batch_mask.sum())
        return original(self, batch_samples, batch_mask, seq_mask)

    monkeypatch.setattr(Codebook, "replace", counting)
    q = make(name, codebook_size=512).train()
    g = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the threshold warning, tested above
        for _ in range(30):
            replaced.append(0)
            q(torch.randn(16, DIM, 8, 8, generator=g))  # 1024 vectors
    levels = q.levels
    assert sum(replaced[10:]) / 20 < 0.02 * 512 * levels, replaced


def test_fsq_is_unaffected_by_bf16_autocast():
    q = make("fsq")
    z = 2 * latents(q, b=8, h=16, w=16)
    ref = q(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    assert out.quantized.dtype == torch.float32
    assert torch.equal(out.ids, ref.ids)
    assert torch.equal(out.usage, ref.usage)


def test_rvq_eval_ids_are_valid_and_depth_lowers_error():
    q = make("rvq", num_quantizers=4, codebook_size=32)
    z = latents(q)
    q.train()
    train_ids = [q(z).ids for _ in range(3)]
    assert all((ids >= -1).all() for ids in train_ids)
    # a training id of -1 (a level dropped by quantizer dropout) still decodes
    assert q.ids_to_latents(train_ids[0]).shape == z.shape
    q.eval()
    out = q(z)
    assert (out.ids >= 0).all(), "eval ids must all be valid: quantizer dropout is training-only"
    # decode each prefix of levels: every extra level must lower the error to the input
    errors = [(q.ids_to_latents(out.ids[..., :k]) - z).pow(2).mean().item() for k in range(1, 5)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]


def test_lfq_entropy_loss_is_finite_with_a_single_token():
    # the library samples int(frac * tokens) tokens for its entropy: 0 tokens would give NaN
    q = make("lfq").train()
    out = q(torch.randn(1, DIM, 1, 1))
    check_losses(out)
    assert set(out.losses) == {"entropy", "commit"}


def test_lfq_projects_only_when_dim_differs_from_bits():
    assert not build("quantizer", "lfq", dim=10, codebook_size=2**10).lfq.has_projections
    assert build("quantizer", "lfq", dim=DIM, codebook_size=2**10).lfq.has_projections
    with pytest.raises(ValueError, match="power of two"):
        build("quantizer", "lfq", dim=DIM, codebook_size=1000)


def test_none_plain_autoencoder_is_identity():
    q = make("none")
    z = latents(q)
    out = q(z)
    assert torch.equal(out.quantized, z) and out.losses == {}


def test_none_with_kl_is_a_vae():
    q = make("none", kl_weight=1e-3)
    assert q.in_channels == 2 * DIM and q.latent_dim == DIM
    z = latents(q)
    q.train()
    a, b = q(z), q(z)
    assert a.quantized.shape == (4, DIM, 8, 8)
    assert not torch.equal(a.quantized, b.quantized), "training must sample"
    assert set(a.losses) == {"kl"} and a.losses["kl"] > 0
    check_losses(a)
    q.eval()
    c, d = q(z), q(z)
    assert torch.equal(c.quantized, d.quantized), "eval must be deterministic"
    torch.testing.assert_close(c.quantized, z[:, :DIM])  # the mean half
    # KL is zero exactly at the prior N(0, I): mean 0, log-variance 0
    prior = q(torch.zeros(1, 2 * DIM, 2, 2))
    assert prior.losses["kl"].item() == pytest.approx(0.0, abs=1e-7)
    assert math.isclose(q.config.kl_weight, 1e-3)
