"""Quantizers: the bottleneck between a tokenizer's encoder and decoder, behind one output type.

- ``"vq"``: vector quantization, VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937), with the
  Improved VQGAN codebook (Yu et al. 2021, arXiv:2110.04627): low-dimensional, l2-normalised codes;
  EMA updates, k-means init and dead-code replacement against codebook collapse; gradients by the
  rotation trick (Fifty et al. 2024, arXiv:2410.06424) or the plain straight-through estimator.
- ``"rvq"``: residual VQ, SoundStream (Zeghidour et al. 2021, arXiv:2107.03312) and RQ-VAE
  (Lee et al. 2022, arXiv:2203.01941); quantizer dropout makes every prefix of levels decodable.
- ``"fsq"``: finite scalar quantization (Mentzer et al. 2023, arXiv:2309.15505).
- ``"lfq"``: lookup-free quantization with an entropy penalty, MAGVIT-v2 (Yu et al. 2023,
  arXiv:2310.05737).
- ``"none"``: a continuous bottleneck: a plain autoencoder, or a VAE (Kingma & Welling 2013,
  arXiv:1312.6114) with the light KL term of latent diffusion (Rombach et al. 2022, arXiv:2112.10752).

The discrete ones wrap vector-quantize-pytorch, whose classes each return a different tuple; here
every quantizer returns a ``QuantizerOutput``. Notes on the library (checked against 1.32.0):
- Its fp32 guards are ``autocast('cuda', enabled=False)``: on CPU, and for the input projections on
  any device, bf16 autocast still applies (bare FSQ under CPU bf16 autocast changed ~1% of ids in
  our check). We disable autocast for the whole forward on the input's device type.
- Straight-through / rotation-trick gradients and all losses exist in training mode only; in eval
  mode VQ/RVQ/LFQ return the bare code vectors (no gradient to the input) and zero losses.
- VQ k-means init runs on the first forward through a codebook, in eval mode too; until then a
  k-means codebook is all zeros. RVQ levels skipped by quantizer dropout initialise later.
- ResidualVQ returns one commitment loss per level (dropped levels 0); we sum them. In training,
  dropped levels come back as id -1; eval ids are always >= 0.
- FSQ returns int32 ids, LFQ int64, VQ int64: we return int64.
- A codebook reads ``threshold_ema_dead_code`` on every training step (``Codebook.expire_codes_``),
  so we set it per batch (``_set_dead_code_threshold``); a re-seeded code restarts at the configured
  value (its ``reset_cluster_size``, fixed at construction).
- LFQ's entropy loss materialises [frac * B*H*W, codebook_size] fp32 distances and softmax
  (about 12 bytes per entry): 2^10 codes x 2048 sampled tokens is 25 MB, 2^18 codes is 6 GB.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn
from vector_quantize_pytorch import FSQ, LFQ, ResidualVQ, VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import Codebook

from trilemma.registry import register


@dataclass
class QuantizerOutput:
    """What every quantizer returns.

    quantized: [B, latent_dim, H, W] fed to the decoder; straight-through gradients in training
    ids:       LongTensor [B, H, W], or [B, H, W, levels] for residual depth; None if continuous
    losses:    named scalar losses, each already weighted ({} if none)
    usage:     FloatTensor [vocab_size], how often each code occurs in this batch; None if continuous
    """

    quantized: Tensor
    ids: Tensor | None
    losses: dict[str, Tensor]
    usage: Tensor | None


class Quantizer(nn.Module):
    """Base class: ``forward`` checks the input and runs ``_quantize`` in fp32 with autocast off.

    ``dim`` is the channel count the tokenizer gives the bottleneck; the encoder must output
    ``in_channels`` (dim, or 2 * dim for the VAE) and the decoder receives ``latent_dim`` (dim).
    """

    vocab_size: int | None = None  # codes per level; None for continuous latents
    _min_id = 0  # smallest valid id (RVQ also accepts -1: a dropped level)

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    @property
    def levels(self) -> int:
        return 1

    @property
    def discrete(self) -> bool:
        return self.vocab_size is not None

    @property
    def latent_dim(self) -> int:
        """Channels of ``quantized``: what the decoder receives."""
        return self.dim

    @property
    def in_channels(self) -> int:
        """Channels the encoder must output."""
        return self.dim

    def forward(self, z: Tensor) -> QuantizerOutput:
        if z.ndim != 4 or z.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects [B, {self.in_channels}, H, W], got {tuple(z.shape)}"
            )
        # fp32 always: in bf16, rounding moves FSQ/LFQ bins and VQ nearest codes (lost codes)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._quantize(z.float())

    def ids_to_latents(self, ids: Tensor) -> Tensor:
        """Decode ids ([B, H, W] or [B, H, W, levels]) to [B, latent_dim, H, W]."""
        if not self.discrete:
            raise TypeError(
                f"the {self.registry_name!r} quantizer is continuous: its tokens are the latents "
                "themselves (QuantizerOutput.quantized), there are no ids to decode"
            )
        ndim = 3 if self.levels == 1 else 4
        if ids.ndim != ndim or ids.dtype.is_floating_point:
            shape = "[B, H, W]" if ndim == 3 else f"[B, H, W, {self.levels}]"
            raise ValueError(f"ids must be integers of shape {shape}, got {ids.dtype} {tuple(ids.shape)}")
        if (ids >= self.vocab_size).any() or (ids < self._min_id).any():
            raise ValueError(f"ids must be in [{self._min_id}, {self.vocab_size})")
        h, w = ids.shape[1:3]
        flat = rearrange(ids.long(), "b h w ... -> b (h w) ...")
        with torch.autocast(device_type=ids.device.type, enabled=False):
            latents = self._decode(flat)  # [B, H*W, D]
        return rearrange(latents, "b (h w) d -> b d h w", h=h, w=w)

    def _quantize(self, z: Tensor) -> QuantizerOutput:
        raise NotImplementedError

    def _decode(self, ids: Tensor) -> Tensor:
        raise NotImplementedError

    def _usage(self, ids: Tensor) -> Tensor:
        ids = ids[ids >= 0]  # -1 marks a level dropped by RVQ quantizer dropout, not a code
        return torch.bincount(ids.flatten(), minlength=self.vocab_size).float()

    def _output(self, quantized: Tensor, ids: Tensor, losses: dict[str, Tensor], h: int, w: int):
        """Assemble the output from the library's [B, H*W, ...] tensors."""
        ids = rearrange(ids.long(), "b (h w) ... -> b h w ...", h=h, w=w)
        quantized = rearrange(quantized, "b (h w) d -> b d h w", h=h, w=w)
        return QuantizerOutput(quantized, ids, losses, self._usage(ids))


def _codebook_quantize(module: Quantizer, codebooks: nn.Module, z: Tensor) -> QuantizerOutput:
    """``z`` [B, D, H, W] through vector-quantize-pytorch's ``codebooks`` (VectorQuantize or
    ResidualVQ) as a sequence of H * W vectors; the commitment loss summed (over levels, if any)."""
    h, w = z.shape[2:]
    x = rearrange(z, "b d h w -> b (h w) d")
    if module.training:
        _set_dead_code_threshold(module, codebooks, x.shape[0] * x.shape[1])
    quantized, ids, loss = codebooks(x)
    return module._output(quantized, ids, {"commit": loss.sum()}, h, w)


# A code is dead under this fraction of a uniformly used code's EMA count (vectors per batch /
# codebook size), whatever the configured threshold: at the full count every below-average code
# would be re-seeded every step (the promptable presets: 1024 vectors for 512 codes, threshold 2).
DEAD_CODE_FRACTION = 0.5


def dead_code_threshold(threshold: float, num_vectors: int, codebook_size: int) -> float:
    """The EMA count under which a code is re-seeded, for batches of ``num_vectors``: the configured
    ``threshold``, at most ``DEAD_CODE_FRACTION`` of a uniformly used code's count."""
    return min(threshold, DEAD_CODE_FRACTION * num_vectors / codebook_size)


def _set_dead_code_threshold(module: Quantizer, codebooks: nn.Module, num_vectors: int) -> None:
    """Set every codebook's dead-code threshold for this batch (RVQ levels dropped by quantizer
    dropout skip the whole step, so each level sees every vector of the steps it runs), and warn
    once where the configured one would have counted every code up to a uniformly used one dead."""
    cfg = module.config
    if cfg.threshold_ema_dead_code <= 0:
        return  # replacement off (the library decided at construction)
    per_code = num_vectors / cfg.codebook_size
    threshold = dead_code_threshold(cfg.threshold_ema_dead_code, num_vectors, cfg.codebook_size)
    for codebook in codebooks.modules():
        if isinstance(codebook, Codebook):
            codebook.threshold_ema_dead_code = threshold
    if per_code <= cfg.threshold_ema_dead_code and not module._warned:
        module._warned = True
        needed = cfg.threshold_ema_dead_code * cfg.codebook_size / DEAD_CODE_FRACTION
        warnings.warn(
            f"{module.registry_name}: {num_vectors} vectors per batch for {cfg.codebook_size} codes "
            f"gives an EMA count of {per_code:.2f} per code, not above `threshold_ema_dead_code="
            f"{cfg.threshold_ema_dead_code}`: codes are re-seeded under {threshold:.2f} instead "
            f"({DEAD_CODE_FRACTION} of that count); {math.ceil(needed)} vectors per batch would keep it.",
            stacklevel=4,
        )


def _codebook_kwargs(cfg: "VectorQuantizer.Config") -> dict:
    return dict(
        decay=cfg.decay,
        kmeans_init=cfg.kmeans_init,
        kmeans_iters=cfg.kmeans_iters,
        threshold_ema_dead_code=cfg.threshold_ema_dead_code,
        use_cosine_sim=cfg.use_cosine_sim,
        commitment_weight=cfg.commitment_weight,
        rotation_trick=cfg.rotation_trick,
    )


@register("quantizer", "vq")
class VectorQuantizer(Quantizer):
    """Nearest-code lookup in a learned codebook (EMA-updated, k-means initialised).

    A code whose EMA count falls under ``threshold_ema_dead_code`` is re-seeded from the batch; the
    threshold is capped per batch at ``DEAD_CODE_FRACTION`` of a uniformly used code's count (batch
    vectors / codebook_size), else every below-average code would be re-seeded every step (we warn
    where the configured value reaches that count). With decay 0.99 an unused code is noticed after
    ln(count / threshold) / 0.01 steps (~140 from a count of 8).
    """

    @dataclass
    class Config:
        codebook_size: int = 512  # vocabulary size
        codebook_dim: int | None = 8  # factorised low-dim codes, projected in/out; None = dim
        decay: float = 0.99  # EMA decay of the codebook updates
        kmeans_init: bool = True  # codes start as k-means centroids of the first batch
        kmeans_iters: int = 10
        threshold_ema_dead_code: float = 2.0  # re-seed codes under this EMA count (at most half of vectors per batch / codes)
        use_cosine_sim: bool = True  # l2-normalised inputs and codes (Improved VQGAN); needs roughly centred inputs
        commitment_weight: float = 0.25  # beta of VQ-VAE; the loss is named "commit"
        rotation_trick: bool = True  # gradient estimator: rotation trick, else plain straight-through

    def __init__(self, config: Config, dim: int):
        super().__init__(dim)
        self.config = config
        self.vocab_size = config.codebook_size
        self._warned = False
        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=config.codebook_size,
            codebook_dim=config.codebook_dim,
            **_codebook_kwargs(config),
        )

    def _quantize(self, z: Tensor) -> QuantizerOutput:
        return _codebook_quantize(self, self.vq, z)

    def _decode(self, ids: Tensor) -> Tensor:
        return self.vq.get_output_from_indices(ids)


@register("quantizer", "rvq")
class ResidualVectorQuantizer(Quantizer):
    """A stack of VQ codebooks, each quantizing the residual left by the ones before it."""

    @dataclass
    class Config(VectorQuantizer.Config):
        num_quantizers: int = 4  # residual depth: ids per position
        codebook_dim: int | None = None  # None = dim: a low-dim subspace caps what depth can add
        use_cosine_sim: bool = False  # residuals need magnitudes: unit codes cannot shrink them
        quantize_dropout: bool = True  # train on random prefixes so coarse ids decode too
        quantize_dropout_cutoff_index: int = 1  # always keep at least levels 0..cutoff

    _min_id = -1  # a level dropped by quantizer dropout (training only)

    def __init__(self, config: Config, dim: int):
        super().__init__(dim)
        self.config = config
        self.vocab_size = config.codebook_size  # per level; the same codebook size at every level
        self._warned = False
        self.rvq = ResidualVQ(
            dim=dim,
            num_quantizers=config.num_quantizers,
            codebook_size=config.codebook_size,
            codebook_dim=config.codebook_dim,
            quantize_dropout=config.quantize_dropout,
            quantize_dropout_cutoff_index=config.quantize_dropout_cutoff_index,
            **_codebook_kwargs(config),
        )

    @property
    def levels(self) -> int:
        return self.config.num_quantizers

    def _quantize(self, z: Tensor) -> QuantizerOutput:
        """ids [B, H, W, levels]; in training, levels dropped by quantizer dropout are -1.

        usage counts codes over all levels together ([vocab_size], -1 excluded), so the usage
        fraction says how many code ids are used at some level.
        """
        return _codebook_quantize(self, self.rvq, z)  # the levels' commitment losses summed, as SoundStream

    def _decode(self, ids: Tensor) -> Tensor:
        """Any prefix of levels decodes (missing levels, like -1 ids, contribute nothing)."""
        if ids.shape[-1] > self.levels:
            raise ValueError(f"ids have {ids.shape[-1]} levels, this quantizer has {self.levels}")
        ids = nn.functional.pad(ids, (0, self.levels - ids.shape[-1]), value=-1)
        return self.rvq.get_output_from_indices(ids)


@register("quantizer", "fsq")
class FiniteScalarQuantizer(Quantizer):
    """A few projected channels, each rounded to a fixed grid: the codebook is their product."""

    @dataclass
    class Config:
        levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # bins per channel: 1000 codes

    def __init__(self, config: Config, dim: int):
        super().__init__(dim)
        self.config = config
        self.vocab_size = math.prod(config.levels)
        self.fsq = FSQ(levels=list(config.levels), dim=dim)

    def _quantize(self, z: Tensor) -> QuantizerOutput:
        h, w = z.shape[2:]
        quantized, ids = self.fsq(rearrange(z, "b d h w -> b (h w) d"))
        return self._output(quantized, ids, {}, h, w)

    def _decode(self, ids: Tensor) -> Tensor:
        return self.fsq.indices_to_codes(ids)


# LFQ's entropy needs enough tokens to estimate the batch code distribution; with fewer than
# one sampled token the library averages over nothing (NaN). Cheap: 256 x 2^10 floats = 1 MB.
_MIN_ENTROPY_SAMPLES = 256


@register("quantizer", "lfq")
class LookupFreeQuantizer(Quantizer):
    """Sign of each of log2(codebook_size) projected channels: a code is a bit pattern, no lookup."""

    @dataclass
    class Config:
        codebook_size: int = 2**10  # a power of two: log2 of it is the number of bits per token
        entropy_loss_weight: float = 0.1  # the loss named "entropy" (can be negative)
        commitment_loss_weight: float = 0.25  # the loss named "commit"
        diversity_gamma: float = 1.0  # weight of batch entropy (code diversity) vs per-token confidence
        frac_per_sample_entropy: float = 0.25  # fraction of tokens in the entropy loss: bounds memory

    def __init__(self, config: Config, dim: int):
        super().__init__(dim)
        bits = math.log2(config.codebook_size)
        if not bits.is_integer():
            raise ValueError(f"lfq codebook_size must be a power of two, got {config.codebook_size}")
        self.config = config
        self.vocab_size = config.codebook_size
        # LFQ projects dim -> bits -> dim itself when dim != log2(codebook_size)
        self.lfq = LFQ(
            dim=dim,
            codebook_size=config.codebook_size,
            entropy_loss_weight=config.entropy_loss_weight,
            commitment_loss_weight=config.commitment_loss_weight,
            diversity_gamma=config.diversity_gamma,
            frac_per_sample_entropy=config.frac_per_sample_entropy,
        )

    def _quantize(self, z: Tensor) -> QuantizerOutput:
        cfg = self.config
        h, w = z.shape[2:]
        x = rearrange(z, "b d h w -> b (h w) d")
        num_tokens = x.shape[0] * x.shape[1]
        frac = max(cfg.frac_per_sample_entropy, _MIN_ENTROPY_SAMPLES / num_tokens)
        self.lfq.frac_per_sample_entropy = min(1.0, frac)  # read by the library on each forward
        (quantized, ids, _), breakdown = self.lfq(x, return_loss_breakdown=True)
        # the library sums these into one aux loss; we keep them apart (same weights)
        entropy = breakdown.per_sample_entropy - cfg.diversity_gamma * breakdown.batch_entropy
        losses = {
            "entropy": entropy * cfg.entropy_loss_weight,
            "commit": breakdown.commitment * cfg.commitment_loss_weight,
        }
        return self._output(quantized, ids, losses, h, w)

    def _decode(self, ids: Tensor) -> Tensor:
        return self.lfq.indices_to_codes(ids)


@register("quantizer", "none")
class ContinuousBottleneck(Quantizer):
    """No quantization: the latents are the tokens. With kl_weight > 0 a diagonal-Gaussian VAE.

    Plain AE: in_channels = latent_dim = dim, identity. VAE: the encoder outputs 2*dim channels
    (mean, log-variance); training samples, eval returns the mean.
    """

    @dataclass
    class Config:
        kl_weight: float = 0.0  # 0 = plain autoencoder; > 0 = VAE with loss "kl" (LDM uses ~1e-6)

    def __init__(self, config: Config, dim: int):
        super().__init__(dim)
        self.config = config

    @property
    def in_channels(self) -> int:
        return 2 * self.dim if self.config.kl_weight > 0 else self.dim

    def _quantize(self, z: Tensor) -> QuantizerOutput:
        if self.config.kl_weight <= 0:
            return QuantizerOutput(z, None, {}, None)
        mean, logvar = rearrange(z, "b (two d) h w -> two b d h w", two=2)
        logvar = logvar.clamp(-30.0, 20.0)  # keeps exp(logvar) finite early in training (as LDM)
        latents = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        # KL(q || N(0, I)) averaged per latent element, so the weight does not scale with H*W*D
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return QuantizerOutput(latents, None, {"kl": kl * self.config.kl_weight}, None)
