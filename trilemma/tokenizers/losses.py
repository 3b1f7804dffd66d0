"""Tokenizer training losses: pixel reconstruction, LPIPS perceptual (Zhang et al. 2018), and the
VQGAN adversarial term (Esser et al. 2021): a PatchGAN discriminator (Isola et al. 2017) with hinge
loss, switched on at ``gan_start`` and weighted adaptively by the ratio of gradient norms at the
decoder's last layer. Every term is returned separately so it can be logged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's ImageNet backbones that LPIPS builds on; the lpips package ships only its linear heads.
LPIPS_BACKBONES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}


@dataclass
class LossConfig:
    l1_weight: float = 0.0  # mean absolute error in [-1, 1] pixel units; off: on sparse shapes L1 sat at a blank image
    l2_weight: float = 1.0  # mean squared error (docs/experiments.md, conv tokenizers and losses)
    perceptual_weight: float = 0.0  # LPIPS; needs the backbone weights on disk
    lpips_net: str = "vgg"  # "vgg" or "alex"
    gan_weight: float = 0.0  # 0 disables the discriminator
    gan_start: int = 2000  # step at which the adversarial term switches on
    disc_channels: int = 64
    disc_layers: int = 3
    adaptive_gan_weight: bool = True  # VQGAN's gradient-norm ratio at the decoder's last layer

    def __post_init__(self) -> None:
        for name in ("l1_weight", "l2_weight", "perceptual_weight", "gan_weight", "gan_start"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"`{name}` must be >= 0, got {value}")


def lpips_backbone_path(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONES[net]


def load_lpips(net: str = "vgg") -> nn.Module:
    """LPIPS with its ImageNet backbone loaded from disk. Never downloads."""
    import torchvision  # deferred: a 1 s import

    try:
        import lpips
    except ImportError:
        raise ImportError("LPIPS needs the lpips package; install it with `pip install 'trilemma[lpips]'`") from None

    if net not in LPIPS_BACKBONES:
        raise ValueError(f"lpips_net must be one of {sorted(LPIPS_BACKBONES)}, got {net!r}")
    path = lpips_backbone_path(net)
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS needs the torchvision {net} ImageNet weights file {path.name}; put it at {path} "
            f"(or set TORCH_HOME so that $TORCH_HOME/hub/checkpoints/{path.name} exists)"
        )
    model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)  # heads ship with lpips; trunk below
    tv = torchvision.models.vgg16() if net == "vgg" else torchvision.models.alexnet()
    tv.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    for slice_module in model.net.children():
        for name, layer in slice_module.named_children():
            layer.load_state_dict(tv.features[int(name)].state_dict())
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class PatchDiscriminator(nn.Module):
    """PatchGAN: a stack of strided convs giving one real/fake logit per receptive-field patch."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers):
            c_next = channels * min(2**i, 8)
            mods += [nn.Conv2d(c, c_next, 4, 2, 1, bias=False), nn.GroupNorm(min(32, c_next // 4), c_next), nn.LeakyReLU(0.2)]
            c = c_next
        mods += [nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.GroupNorm(min(32, c // 4), c), nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TokenizerLoss(nn.Module):
    """Reconstruction + perceptual + adversarial terms; the discriminator lives here."""

    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config
        self.lpips = load_lpips(config.lpips_net) if config.perceptual_weight > 0 else None
        self.discriminator = (
            PatchDiscriminator(config.disc_channels, config.disc_layers) if config.gan_weight > 0 else None
        )

    def gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.config.gan_start

    def generator_terms(
        self, images: torch.Tensor, recon: torch.Tensor, step: int, last_layer: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        c = self.config
        images, recon = images.float(), recon.float()
        terms: dict[str, torch.Tensor] = {}
        if c.l1_weight:
            terms["l1"] = c.l1_weight * (images - recon).abs().mean()
        if c.l2_weight:
            terms["l2"] = c.l2_weight * F.mse_loss(recon, images)
        if self.lpips is not None:
            terms["perceptual"] = c.perceptual_weight * self.lpips(recon, images).mean()
        if self.gan_active(step):
            g_loss = -self._frozen_discriminator(recon).mean()
            weight: torch.Tensor | float = c.gan_weight
            if c.adaptive_gan_weight and last_layer is not None and torch.is_grad_enabled():
                rec = sum(terms.values())
                rec_grad = torch.autograd.grad(rec, last_layer, retain_graph=True)[0]
                g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
                weight = c.gan_weight * (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4).detach()
            terms["gan"] = weight * g_loss
        return terms

    def _frozen_discriminator(self, images: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits with its parameters out of the graph: the generator's
        adversarial term must neither update nor accumulate gradients into the discriminator."""
        params = [p for p in self.discriminator.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            return self.discriminator(images)
        finally:
            for p in params:
                p.requires_grad_(True)

    def discriminator_terms(self, images: torch.Tensor, recon: torch.Tensor,
                            discriminator: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Hinge loss of ``discriminator`` (default: ours; the training loop passes its prepared,
        possibly DDP-wrapped copy so that gradients sync) on real images vs detached
        reconstructions, in one forward pass (GroupNorm is per sample, so batching changes nothing)."""
        disc = discriminator if discriminator is not None else self.discriminator
        logits = disc(torch.cat([images.float(), recon.detach().float()]))
        real, fake = logits.chunk(2)
        return {"disc": 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())}
