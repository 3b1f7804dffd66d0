"""Metric functions against hand computations, closed forms and independent references."""

import math

import numpy as np
import pytest
import torch

from trilemma.metrics.scores import (
    bits_per_image,
    codebook_usage,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid,
    perplexity,
    precision_recall,
    psnr,
    ssim,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(b=2, h=16, w=16, seed=0):
    return torch.rand(b, 3, h, w, generator=_gen(seed)) * 1.6 - 0.8


# ----------------------------------------------------------------------------- PSNR


def test_psnr_constant_offset_matches_hand_value():
    x = _images()
    offsets = torch.tensor([0.1, 0.2]).view(2, 1, 1, 1)
    p = psnr(x, x + offsets)
    # MSE = offset^2, range 2: 10 log10(4 / 0.01) and 10 log10(4 / 0.04).
    assert p.shape == (2,)
    assert p[0].item() == pytest.approx(10 * math.log10(400), abs=1e-4)
    assert p[1].item() == pytest.approx(10 * math.log10(100), abs=1e-4)


def test_psnr_equals_unit_range_psnr_and_is_inf_for_identical():
    x, y = _images(seed=1), _images(seed=2)
    assert torch.allclose(psnr(x, y), psnr((x + 1) / 2, (y + 1) / 2, data_range=1.0))
    assert torch.isinf(psnr(x, x)).all()


def test_psnr_over_a_mask_is_the_psnr_of_the_region():
    x, y = _images(seed=1), _images(seed=2)
    mask = torch.zeros(1, 1, *x.shape[-2:])
    mask[..., 2:6, 1:5] = 1
    region = psnr(x[..., 2:6, 1:5], y[..., 2:6, 1:5])
    assert torch.allclose(psnr(x, y, mask=mask), region, atol=1e-4)
    assert not torch.allclose(psnr(x, y, mask=1 - mask), region, atol=1e-2)


# ----------------------------------------------------------------------------- SSIM


def _ssim_reference(x: np.ndarray, y: np.ndarray, data_range: float, window: int, sigma=1.5) -> float:
    """Window-by-window SSIM of one [C, H, W] pair, written from the paper's definitions."""
    coords = np.arange(window) - (window - 1) / 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - window + 1):
            for j in range(x.shape[2] - window + 1):
                p, q = x[c, i : i + window, j : j + window], y[c, i : i + window, j : j + window]
                mp, mq = (w * p).sum(), (w * q).sum()
                vp, vq = (w * (p - mp) ** 2).sum(), (w * (q - mq) ** 2).sum()
                cov = (w * (p - mp) * (q - mq)).sum()
                values.append((2 * mp * mq + c1) * (2 * cov + c2) / ((mp**2 + mq**2 + c1) * (vp + vq + c2)))
    return float(np.mean(values))


def test_ssim_of_image_with_itself_is_one():
    x = _images()
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)


def test_ssim_constant_images_match_luminance_formula():
    a, c = 0.2, 0.3
    x = torch.full((1, 3, 12, 12), a)
    # Equal (zero) variances leave only the luminance term.
    c1 = (0.01 * 2) ** 2
    expected = (2 * a * (a + c) + c1) / (a**2 + (a + c) ** 2 + c1)
    assert ssim(x, x + c).item() == pytest.approx(expected, rel=1e-6)


# Images smaller than the 11-pixel window use the largest odd window that fits.
@pytest.mark.parametrize("shape, window", [((14, 13), 11), ((7, 9), 7), ((6, 10), 5)])
def test_ssim_matches_windowed_reference(shape, window):
    x = _images(1, *shape, seed=3)
    y = (x + 0.3 * torch.randn(x.shape, generator=_gen(4))).clamp(-1, 1)
    ref_noise = _ssim_reference(x[0].double().numpy(), y[0].double().numpy(), 2.0, window)
    ref_shift = _ssim_reference(x[0].double().numpy(), (x[0] + 0.1).double().numpy(), 2.0, window)
    assert ssim(x, y).item() == pytest.approx(ref_noise, abs=1e-6)
    assert ssim(x, x + 0.1).item() == pytest.approx(ref_shift, abs=1e-6)


def test_ssim_falls_with_noise():
    x = _images(1, 24, 24)
    noise = torch.randn(x.shape, generator=_gen(5))
    scores = [ssim(x, x + s * noise).item() for s in (0.05, 0.2, 0.5)]
    assert scores[0] > scores[1] > scores[2]


# ----------------------------------------------------------------------------- FID


def _correlated(n, d, seed):
    g = _gen(seed)
    mix = torch.randn(d, d, generator=g) / math.sqrt(d)
    return torch.randn(n, d, generator=g) @ mix + torch.randn(d, generator=g)


def test_fid_of_a_set_with_itself_is_zero():
    f = _correlated(500, 32, 0)
    _, sigma = feature_statistics(f)
    assert abs(fid_from_features(f, f)) < 1e-6 * np.trace(sigma)


def test_fid_with_fewer_samples_than_dims_stays_finite():
    f = _correlated(20, 64, 1)  # singular covariance
    _, sigma = feature_statistics(f)
    assert abs(fid_from_features(f, f)) < 1e-4 * np.trace(sigma)


def test_fid_grows_with_added_noise():
    f = _correlated(1000, 16, 2)
    noise = torch.randn(f.shape, generator=_gen(3))
    scores = [fid_from_features(f, f + s * noise) for s in (0.1, 0.3, 1.0, 3.0)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6))
    s1 = a @ a.T + np.eye(6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    # Commuting case: sqrt(s1 * 4 s1) = 2 s1, so FID = |dmu|^2 + tr(s1) + 4 tr(s1) - 4 tr(s1).
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, 4 * s1) == pytest.approx(expected, rel=1e-9)
    # General case: tr sqrt(s1 s2) = sum of sqrt of the (real, non-negative) eigenvalues of s1 s2.
    b = rng.standard_normal((6, 6))
    s2 = b @ b.T + 0.5 * np.eye(6)
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_on_rank_deficient_covariances():
    # Fewer samples than dimensions (the usual FID case at small N): singular covariances.
    rng = np.random.default_rng(1)
    f1, f2 = rng.standard_normal((20, 64)), rng.standard_normal((20, 64)) + 0.5
    (m1, s1), (m2, s2) = feature_statistics(f1), feature_statistics(f2)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-6)
    assert abs(frechet_distance(m1, s1, m1, s1)) < 1e-6 * np.trace(s1)  # round-off only


def test_frechet_distance_rejects_a_matrix_that_is_not_a_covariance():
    with pytest.raises(ValueError, match="not positive semi-definite"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


def test_fid_from_samples_approaches_gaussian_closed_form():
    g = _gen(4)
    std1, std2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])
    mu2 = torch.tensor([1.0, 0.0, -1.0])
    f1 = torch.randn(50_000, 3, generator=g) * std1
    f2 = torch.randn(50_000, 3, generator=g) * std2 + mu2
    expected = (mu2**2).sum() + ((std1 - std2) ** 2).sum()  # diagonal covariances
    assert fid_from_features(f1, f2) == pytest.approx(expected.item(), rel=0.03)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------- KID


def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
    g = _gen(5)
    a, b = torch.randn(600, 16, generator=g), torch.randn(600, 16, generator=g)
    mean, std = kid(a, b, subsets=20, subset_size=200)
    assert abs(mean) < 3 * std and abs(mean) < 0.02
    shifted_mean, shifted_std = kid(a, b + 0.3, subsets=20, subset_size=200)
    assert shifted_mean > 0.1 and shifted_mean > 3 * shifted_std


def test_kid_is_seeded_and_subsets_vary_on_small_sets():
    g = _gen(6)
    a, b = torch.randn(50, 8, generator=g), torch.randn(40, 8, generator=g)
    assert kid(a, b, subsets=5, subset_size=1000, seed=1) == kid(a, b, subsets=5, subset_size=1000, seed=1)
    # subset_size drops to 20 rows (half the smaller set): subsets vary, so the spread is real.
    assert kid(a, b, subsets=5, seed=1) != kid(a, b, subsets=5, seed=2)
    assert kid(a, b, subsets=5, seed=1)[1] > 0
    with pytest.raises(ValueError, match="at least 4"):
        kid(a[:3], b)


# ----------------------------------------------------------------------------- precision / recall


def test_precision_recall_identical_sets_are_one():
    f = torch.randn(300, 8, generator=_gen(7))
    assert precision_recall(f, f) == (1.0, 1.0)


def test_precision_recall_same_distribution_is_high():
    g = _gen(8)
    p, r = precision_recall(torch.randn(800, 2, generator=g), torch.randn(800, 2, generator=g))
    assert p > 0.9 and r > 0.9


def test_fake_covering_one_mode_has_high_precision_low_recall():
    g = _gen(9)
    modes = torch.randint(0, 2, (800, 1), generator=g) * 10.0 - 5.0
    real = torch.randn(800, 2, generator=g) + modes
    fake = torch.randn(800, 2, generator=g) + 5.0
    p, r = precision_recall(real, fake)
    assert p > 0.9 and 0.35 < r < 0.65


def test_precision_recall_does_not_depend_on_chunking():
    g = _gen(10)
    real, fake = torch.randn(200, 4, generator=g), torch.randn(150, 4, generator=g) * 1.5
    assert precision_recall(real, fake, chunk=7) == precision_recall(real, fake, chunk=1024)


# ----------------------------------------------------------------------------- token metrics


def test_codebook_usage_and_perplexity_on_crafted_ids():
    ids = torch.tensor([[0, 0], [1, 1]])
    assert codebook_usage(ids, 4) == 0.5
    assert perplexity(ids, 4) == pytest.approx(2.0)
    uniform = torch.arange(8).repeat(3)
    assert codebook_usage(uniform, 8) == 1.0 and perplexity(uniform, 8) == pytest.approx(8.0)
    assert perplexity(torch.zeros(10, dtype=torch.long), 16) == pytest.approx(1.0)


def test_token_metrics_accept_counts():
    counts = torch.tensor([3, 1, 0, 0])
    p = np.array([0.75, 0.25])
    assert codebook_usage(counts=counts) == 0.5
    assert perplexity(counts=counts) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert perplexity(torch.tensor([0, 0, 0, 1]), 4) == perplexity(counts=counts)


def test_token_metrics_reject_out_of_range_ids():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        codebook_usage(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match="empty"):
        perplexity(counts=torch.zeros(4))


def test_bits_per_image():
    assert bits_per_image(256, 1024) == 2560
    assert bits_per_image(64, 256, levels=4) == 64 * 4 * 8
    assert bits_per_image(16, 1) == 0
