"""Reconstruction evaluation of any tokenizer: how lossless, how compact, how discrete, how fast.

One pass over a fixed image set encodes and decodes every batch and measures, in one dict:
- fidelity: PSNR and SSIM (Wang et al. 2004), LPIPS (Zhang et al., "The Unreasonable
  Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018) when its backbone weights
  are on disk, and rFID: the Frechet distance (Heusel et al. 2017) between features of the
  originals and of their reconstructions, in any feature network (Inception or domain features),
  beside its real-vs-real floor, and only where the set is large enough (``rfid_left_out``);
- the code: codebook usage and perplexity over the whole set (per residual level, averaged);
- compactness: tokens per image and bits per image (discrete), or floats per image and effective
  bits per image (continuous: ``metrics.bits``), the axes of the compact / lossless / discrete trilemma;
- throughput: encode and decode images per second, timed separately.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from trilemma.metrics import scores
from trilemma.metrics.bits import FLOAT_BITS, effective_bits
from trilemma.metrics.features import FeatureExtractor, extract
from trilemma.tokenizers.losses import load_lpips

KEYS = (
    "psnr", "ssim", "lpips", "rfid", "rfid_floor", "codebook_usage", "perplexity", "tokens_per_image", "bits_per_image",
    "floats_per_image", "effective_bits_per_image", "storage_bits_per_image", "quantization_step", "discrete",
    "encode_images_per_s", "decode_images_per_s",
)  # fmt: skip


def rfid_left_out(n_images: int, feature_dim: int, floor_images: int | None) -> str | None:
    """Why rFID is not measured on ``n_images`` in ``feature_dim``-d features with a real floor set
    of ``floor_images`` (None: no floor set), or None when it is. The rule: more images than feature
    dimensions, as the covariance of n images has rank at most n - 1 (below ``dim + 1`` FID takes the
    square root of a singular matrix and mostly measures the sample size), and a real-vs-real floor
    (two disjoint real sets of n images in the same features) to read the score against."""
    if n_images <= feature_dim:
        return (f"{n_images} images for {feature_dim}-d features: rFID needs more images than feature dimensions "
                "(the covariance of n images has rank at most n - 1)")
    if floor_images is None:
        return ("no real-vs-real floor: rFID needs `floor_images`, as many real images again, disjoint from "
                "the evaluated ones")
    return None


def _device_of(module: torch.nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    if param is None:
        param = next(module.buffers(), None)
    return param.device if param is not None else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels are asynchronous: wait before reading the clock
        torch.cuda.synchronize(device)


_LPIPS: dict = {}  # loader -> its network, or None where it failed: loaded (or refused, said once) per process


def _load_lpips(enabled: bool):
    """LPIPS for ``evaluate_reconstruction``: loaded once a process (a tradeoff evaluates one network
    per tokenizer and budget), and a missing backbone said once, not at every evaluation."""
    if not enabled:
        return None
    if load_lpips not in _LPIPS:  # keyed by the loader, so a test's stand-in is loaded afresh
        try:
            _LPIPS[load_lpips] = load_lpips()
        except (FileNotFoundError, ImportError) as err:
            print(f"lpips: skipped, {err}")
            _LPIPS[load_lpips] = None
    return _LPIPS[load_lpips]


def count_codes(tokens, spec, counts: torch.Tensor | None) -> torch.Tensor | None:
    """Add this batch's code histogram [levels, vocab] (valid tokens only) to ``counts``."""
    if not spec.discrete or tokens.ids is None:
        return None
    ids = tokens.ids if tokens.ids.ndim == 3 else tokens.ids.unsqueeze(-1)  # [B, T, levels]
    if tokens.mask is not None:
        ids = ids[tokens.mask.bool()]  # [valid, levels]
    ids = ids.reshape(-1, ids.shape[-1]).long().cpu()
    if len(ids) and (ids.min() < 0 or ids.max() >= spec.vocab_size):
        raise ValueError(f"token ids must lie in [0, {spec.vocab_size}), got [{ids.min()}, {ids.max()}]")
    levels = ids.shape[-1]
    # One bincount for all levels: offset level l's ids by l * vocab.
    offset = torch.arange(levels) * spec.vocab_size
    batch = torch.bincount((ids + offset).flatten(), minlength=levels * spec.vocab_size)
    batch = batch.view(levels, spec.vocab_size).double()
    return batch if counts is None else counts + batch


@torch.no_grad()
def evaluate_reconstruction(
    tokenizer,
    images: torch.Tensor,
    features: FeatureExtractor | None = None,
    batch_size: int = 64,
    lpips: bool = True,
    progress: bool = True,
    prompt=None,
    floor_images: torch.Tensor | None = None,
    bits_step_images: int | None = None,
) -> dict:
    """Encode and decode ``images`` [N, 3, H, W] in [-1, 1] and measure everything (``KEYS``).
    ``prompt`` (a promptable tokenizer's budget, e.g. ``Prompt(budget=8)``) goes to every encode.
    ``floor_images``: N other real images (disjoint from ``images``) for rFID's floor.
    ``bits_step_images``: a continuous tokenizer's quantization step for effective bits is chosen on
    the first that many images (``effective_bits``' ``step_images``; None: all).

    - ``psnr``, ``ssim``: means over images (``psnr`` is inf when every image is exact);
    - ``lpips``: mean LPIPS-VGG, None when disabled or when its backbone file is missing (a
      one-line message names the file);
    - ``rfid``: FID between ``features`` of originals and reconstructions, and ``rfid_floor``: FID
      between the originals and ``floor_images`` in the same features. Both None without features,
      or, with a one-line notice, where ``rfid_left_out`` gives a reason (too few images, no floor);
    - ``codebook_usage``: fraction of the vocabulary used at least once over the whole set and
      ``perplexity``: exp(entropy) of that histogram; with ids [N, T, levels] each level is its own
      codebook and both are averaged over levels. None for continuous tokens;
    - ``tokens_per_image``: mean number of valid tokens (a promptable tokenizer's may vary per image);
    - ``bits_per_image`` = tokens x levels x log2(vocab) (None for continuous);
      ``floats_per_image`` = tokens x latent_dim, ``storage_bits_per_image`` = 32 x floats and
      ``effective_bits_per_image``: the entropy of the latents quantized at the coarsest step
      (``quantization_step``) that costs at most 0.1 dB PSNR (``metrics.bits``; None when no step
      does, e.g. an exact tokenizer); all None for discrete; ``discrete``: which one;
    - ``encode_images_per_s``, ``decode_images_per_s``: throughput, each timed on its own.
    Reconstructions are clamped to [-1, 1] before scoring, as ``Tokenizer.reconstruct`` does.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
    if floor_images is not None and tuple(floor_images.shape) != tuple(images.shape):
        raise ValueError(f"`floor_images` must be as many real images as `images` ({tuple(images.shape)}) for rFID's "
                         f"floor, got {tuple(floor_images.shape)}")
    if features is not None:
        left_out = rfid_left_out(len(images), features.dim, None if floor_images is None else len(floor_images))
        if left_out is not None:
            print(f"rfid: left out, {left_out}")
            features = None
    spec = tokenizer.spec
    was_training = tokenizer.training
    tokenizer.eval()
    device = _device_of(tokenizer)
    lpips_net = _load_lpips(lpips)
    if lpips_net is not None:
        lpips_net = lpips_net.to(device)

    psnrs, ssims, lpipses, real_feats, fake_feats = [], [], [], [], []
    counts, n_tokens, encode_s, decode_s, encoded = None, 0, 0.0, 0.0, []
    try:
        with tqdm(total=len(images), unit="img", desc="reconstruction", disable=not progress) as bar:
            for batch in images.split(batch_size):
                x = batch.to(device=device, dtype=torch.float32)
                _sync(device)
                t0 = time.perf_counter()
                tokens = tokenizer.encode(x, prompt) if prompt is not None else tokenizer.encode(x)
                _sync(device)
                t1 = time.perf_counter()
                recon = tokenizer.decode(tokens)
                _sync(device)
                encode_s, decode_s = encode_s + t1 - t0, decode_s + time.perf_counter() - t1
                recon = recon.float().clamp(-1, 1)

                psnrs.append(scores.psnr(recon, x).cpu())
                ssims.append(scores.ssim(recon, x).cpu())
                if lpips_net is not None:
                    lpipses.append(lpips_net(recon, x).flatten().float().cpu())
                if features is not None:
                    real_feats.append(extract(features, x, batch_size=len(x), progress=False))
                    fake_feats.append(extract(features, recon, batch_size=len(x), progress=False))
                counts = count_codes(tokens, spec, counts)
                if not spec.discrete:
                    encoded.append(tokens)  # effective bits start from these tokens and this PSNR
                n_tokens += int(tokens.tokens_per_image().sum())
                bar.update(len(batch))
        measured = None if spec.discrete else effective_bits(
            tokenizer, images, batch_size=batch_size, prompt=prompt, progress=progress,
            encoded=(encoded, torch.cat(psnrs).double().mean().item()), step_images=bits_step_images)
    finally:
        tokenizer.train(was_training)

    n = len(images)
    tokens_per_image = n_tokens / n
    if tokens_per_image == int(tokens_per_image):
        tokens_per_image = int(tokens_per_image)
    usage = perplexity = bits = floats = storage = effective = step = None
    if spec.discrete:
        bits = scores.bits_per_image(tokens_per_image, spec.vocab_size, spec.levels)
        if counts is not None:
            usage = sum(scores.codebook_usage(counts=c) for c in counts) / len(counts)
            perplexity = sum(scores.perplexity(counts=c) for c in counts) / len(counts)
    else:
        floats = tokens_per_image * spec.latent_dim
        storage = FLOAT_BITS * floats
        effective, step = measured.bits_per_image, measured.step
    rfid = rfid_floor = None
    if features is not None:
        real = torch.cat(real_feats)
        rfid = scores.fid_from_features(real, torch.cat(fake_feats))
        floor = extract(features, floor_images, batch_size=batch_size, progress=False)
        rfid_floor = scores.fid_from_features(real, floor)
    return {
        "psnr": torch.cat(psnrs).double().mean().item(),
        "ssim": torch.cat(ssims).double().mean().item(),
        "lpips": torch.cat(lpipses).double().mean().item() if lpipses else None,
        "rfid": rfid,
        "rfid_floor": rfid_floor,
        "codebook_usage": usage,
        "perplexity": perplexity,
        "tokens_per_image": tokens_per_image,
        "bits_per_image": bits,
        "floats_per_image": floats,
        "effective_bits_per_image": effective,
        "storage_bits_per_image": storage,
        "quantization_step": step,
        "discrete": spec.discrete,
        "encode_images_per_s": n / encode_s if encode_s > 0 else math.inf,
        "decode_images_per_s": n / decode_s if decode_s > 0 else math.inf,
    }
