"""Image and token metrics as pure functions on tensors.

Images are float tensors [B, 3, H, W] in [-1, 1]. Papers implemented here:

- PSNR and SSIM: Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility
  to structural similarity", IEEE TIP 2004.
- FID: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium", NeurIPS 2017 (Frechet distance between Gaussians fitted to features).
- KID: Binkowski et al., "Demystifying MMD GANs", ICLR 2018 (unbiased MMD^2, cubic kernel).
- Precision / recall: Kynkaanniemi et al., "Improved Precision and Recall Metric for Assessing
  Generative Models", NeurIPS 2019 (k-NN radii manifolds).
- Codebook usage, perplexity and bits per image describe a discrete tokenizer's vocabulary.

Feature-space metrics take features from ``trilemma.metrics.features``; they never run a network.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- pixel metrics


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, ``10 log10(data_range^2 / MSE)``, shape [B].

    Images in [-1, 1] have range 2; since both the range and the error scale by 2, this equals
    PSNR of the same images mapped to [0, 1] with range 1. Identical images give ``inf``. With a
    ``mask`` [B or 1, 1, H, W], the MSE is over the pixels where it is 1 (a region's PSNR).
    """
    _check_pair(x, y)
    err = (x.double() - y.double()).pow(2)
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        mse = (err.mean(1, keepdim=True) * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 2.0,
    window: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Mean structural similarity per image (Wang et al. 2004), shape [B].

    Gaussian-weighted local statistics (K1=0.01, K2=0.03, population covariances), computed per
    channel over the "valid" region only (no padding) and averaged over pixels and channels.
    This matches scikit-image ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=...)``, which filters with reflection and then
    crops the border of half a window. Images smaller than ``window`` use the largest odd window
    that fits (sigma unchanged, so the Gaussian is truncated) rather than failing.
    """
    _check_pair(x, y)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"ssim window must be a positive odd size, got {window}")
    channels, height, width = x.shape[1:]
    size = min(window, height, width)
    size = size if size % 2 == 1 else size - 1
    g = _gaussian_window(size, sigma).to(x.device)
    kernel_h = g.view(1, 1, size, 1).repeat(5 * channels, 1, 1, 1)
    kernel_w = g.view(1, 1, 1, size).repeat(5 * channels, 1, 1, 1)

    x, y = x.double(), y.double()
    # One depthwise separable filter pass over all five moment maps at once.
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    local = F.conv2d(F.conv2d(maps, kernel_h, groups=5 * channels), kernel_w, groups=5 * channels)
    mu_x, mu_y, e_xx, e_yy, e_xy = local.split(channels, dim=1)
    var_x = e_xx - mu_x**2
    var_y = e_yy - mu_y**2
    cov_xy = e_xy - mu_x * mu_y

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return s.flatten(1).mean(1).float()


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"expected two image batches of equal shape [B, C, H, W], "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )


# ----------------------------------------------------------------------------- FID


def _as_float64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, unbiased as in the FID reference) of features [N, D]."""
    f = _as_float64(features)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64:

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``.

    The trace of the root is computed without a general matrix square root: for covariances
    (symmetric PSD), ``sigma1 sigma2`` is similar to ``A = sigma1^(1/2) sigma2 sigma1^(1/2)``,
    which is symmetric PSD, so ``tr((sigma1 sigma2)^(1/2)) = sum(sqrt(eig(A)))``. Two symmetric
    eigendecompositions replace ``scipy.linalg.sqrtm`` (a Schur method with complex round-off):
    the same value, 4x faster at 2048-d features here, and no imaginary parts to drop.
    Eigenvalues below 0 are round-off on rank-deficient covariances and clip to 0; clearly
    negative ones mean the inputs are not covariances, which raises. The distance is at least 0.
    """
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1),) * 2:
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}"
        )
    root1 = _psd_sqrt(sigma1, "sigma1")
    inner = root1 @ sigma2 @ root1
    eig = _clip_psd(np.linalg.eigvalsh((inner + inner.T) / 2), "sigma1^1/2 sigma2 sigma1^1/2")
    diff = mu1 - mu2
    # Identical statistics give 0 up to round-off, which may land a hair below it.
    return max(0.0, float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eig).sum()))


def _clip_psd(eigenvalues: np.ndarray, name: str) -> np.ndarray:
    """Clip round-off negatives to 0; raise when an eigenvalue is clearly negative."""
    tolerance = 1e-8 * max(1.0, np.abs(eigenvalues).max(initial=0.0)) * len(eigenvalues)
    if eigenvalues.min(initial=0.0) < -tolerance:
        raise ValueError(f"{name} is not positive semi-definite (eigenvalue {eigenvalues.min():.3g}): not a covariance")
    return np.clip(eigenvalues, 0.0, None)


def _psd_sqrt(m: np.ndarray, name: str) -> np.ndarray:
    values, vectors = np.linalg.eigh((m + m.T) / 2)
    return (vectors * np.sqrt(_clip_psd(values, name))) @ vectors.T


def fid_from_features(f1, f2) -> float:
    """FID between two feature sets [N1, D] and [N2, D] (any feature network)."""
    return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))


# ----------------------------------------------------------------------------- KID


def _polynomial_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3: the diagonals k(x_i, x_i) are excluded."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2 * k_xy.mean())


def kid(f1, f2, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): (mean, std) of unbiased MMD^2 estimates.

    Each of ``subsets`` estimates draws ``subset_size`` rows without replacement from each set,
    seeded so the score is reproducible. ``std`` is the spread of the subset estimates (ddof=0),
    not a standard error. When a set has fewer than ``2 * subset_size`` rows the subset size
    drops to half the smaller set: subsets as large as the set would all be the whole set, and
    ``std`` would read 0 however uncertain the estimate is. Computed in float64.
    """
    x, y = torch.from_numpy(_as_float64(f1)), torch.from_numpy(_as_float64(f2))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need features [N, D] with equal D, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(len(x), len(y)) < 4:
        raise ValueError(f"KID needs at least 4 samples per set, got {len(x)} and {len(y)}")
    m = min(subset_size, min(len(x), len(y)) // 2)
    gen = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(subsets):
        rows_x = torch.randperm(len(x), generator=gen)[:m]
        rows_y = torch.randperm(len(y), generator=gen)[:m]
        estimates.append(_polynomial_mmd2(x[rows_x], y[rows_y]))
    return float(np.mean(estimates)), float(np.std(estimates))


# ----------------------------------------------------------------------------- precision / recall


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # |a|^2 + |b|^2 - 2 a.b: one matmul, which is what makes 10k x 10k feasible on CPU.
    d = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T
    return d.clamp_min_(0)


def _knn_radii(points: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest other point."""
    if len(points) <= k:
        raise ValueError(f"need more than k={k} samples for k-NN radii, got {len(points)}")
    radii = [
        # k + 1 smallest: the point itself is its own nearest neighbour at distance 0.
        _squared_distances(points[i : i + chunk], points).topk(k + 1, dim=1, largest=False).values[:, -1]
        for i in range(0, len(points), chunk)
    ]
    return torch.cat(radii)


def _coverage(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Fraction of queries inside at least one ball (centre, radius) of the manifold estimate."""
    inside = [
        (_squared_distances(queries[i : i + chunk], centres) <= radii).any(dim=1)
        for i in range(0, len(queries), chunk)
    ]
    return torch.cat(inside).double().mean().item()


@torch.no_grad()
def precision_recall(real, fake, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    The real manifold is the union of balls around real features with radius the distance to the
    k-th nearest real neighbour; precision is the fraction of fake features inside it. Recall is
    the same with the roles swapped. Distances are computed ``chunk`` rows at a time (float32, as
    the reference does), so memory is O(chunk * N) rather than O(N^2).
    """
    real = torch.as_tensor(real).float()
    fake = torch.as_tensor(fake).float()
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"need features [N, D] with equal D, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    real_radii = _knn_radii(real, k, chunk)
    fake_radii = _knn_radii(fake, k, chunk)
    precision = _coverage(fake, real, real_radii, chunk)
    recall = _coverage(real, fake, fake_radii, chunk)
    return precision, recall


# ----------------------------------------------------------------------------- token metrics


def _code_counts(ids, vocab_size: int | None, counts) -> torch.Tensor:
    """Histogram [vocab_size] (float64) from ids or from a given counts tensor."""
    if counts is not None:
        counts = torch.as_tensor(counts).flatten()
        if vocab_size is not None and len(counts) != vocab_size:
            raise ValueError(f"counts has {len(counts)} entries but vocab_size is {vocab_size}")
        if (counts < 0).any():
            raise ValueError("counts must be non-negative")
        return counts.double()
    if ids is None or vocab_size is None:
        raise ValueError("pass ids and vocab_size, or counts=")
    ids = torch.as_tensor(ids).flatten().long()
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}), got range [{ids.min()}, {ids.max()}]")
    return torch.bincount(ids, minlength=vocab_size).double()


def codebook_usage(ids=None, vocab_size: int | None = None, *, counts=None) -> float:
    """Fraction of the vocabulary used at least once, from ids (any shape) or a counts histogram."""
    c = _code_counts(ids, vocab_size, counts)
    return (c > 0).double().mean().item()


def perplexity(ids=None, vocab_size: int | None = None, *, counts=None) -> float:
    """exp(entropy) of the code histogram: the effective number of codes, in [1, vocab_size]."""
    c = _code_counts(ids, vocab_size, counts)
    total = c.sum()
    if total == 0:
        raise ValueError("perplexity of an empty histogram is undefined")
    p = c[c > 0] / total
    return math.exp(-(p * p.log()).sum().item())


def bits_per_image(num_tokens: int, vocab_size: int, levels: int = 1) -> float:
    """Bits to store one image's ids: ``num_tokens * levels * log2(vocab_size)``.

    ``levels`` is the residual depth (each token position holds ``levels`` ids).
    """
    if num_tokens < 0 or vocab_size < 1 or levels < 1:
        raise ValueError(f"invalid token layout: {num_tokens=} {vocab_size=} {levels=}")
    return num_tokens * levels * math.log2(vocab_size)
