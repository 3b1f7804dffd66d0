"""MAR's per-token diffusion head (Li et al. 2024, "Autoregressive Image Generation without Vector
Quantization", their ``SimpleMLPAdaLN``): a small MLP that denoises one continuous token, conditioned
on a vector ``z`` (the transformer's output at that token's position) and the noise level.

Residual MLP blocks whose LayerNorm is modulated by z + timestep embedding (AdaLN, as DiT's blocks,
Peebles & Xie 2023): shift and scale the normalised input, gate the residual. The modulations and
the output layer start at zero, so each block starts as the identity and the head as predicting 0.
The process it is trained and sampled with is ``nn.diffusion``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

FREQUENCIES = 256  # sinusoidal features of the timestep, before its MLP (DiT's)


@dataclass
class DiffusionHeadConfig:
    token_dim: int  # width of the token denoised (the tokenizer's latent_dim)
    cond_dim: int  # width of the conditioning vector z
    width: int = 256  # hidden width of the residual blocks
    depth: int = 3  # residual blocks


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [B, dim] of (possibly fractional) timesteps t [B] (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class AdaLNBlock(nn.Module):
    """x + gate * MLP(LayerNorm(x) * (1 + scale) + shift), with (shift, scale, gate) from the condition."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(cond).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class DiffusionHead(nn.Module):
    """Denoiser of single tokens: ``head(x_t [M, token_dim], t [M] or scalar, z [M, cond_dim])``
    -> prediction [M, token_dim] (of the type its noise schedule trains: epsilon, v or x_0)."""

    def __init__(self, cfg: DiffusionHeadConfig):
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(FREQUENCIES, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.cond_embed = nn.Linear(cfg.cond_dim, cfg.width)
        self.input_proj = nn.Linear(cfg.token_dim, cfg.width)
        self.blocks = nn.ModuleList(AdaLNBlock(cfg.width) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(cfg.width, eps=1e-6, elementwise_affine=False)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))
        self.output = nn.Linear(cfg.width, cfg.token_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # MAR's: Xavier-uniform linears, a small timestep MLP, and zero modulations and output.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.time_embed:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        for last in [b.modulation[-1] for b in self.blocks] + [self.final_modulation[-1], self.output]:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])  # a scheduler's one t for all
        cond = self.time_embed(timestep_embedding(t, FREQUENCIES)) + self.cond_embed(z)
        h = self.input_proj(x)
        for block in self.blocks:
            h = block(h, cond)
        shift, scale = self.final_modulation(cond).chunk(2, dim=-1)
        return self.output(modulate(self.final_norm(h), shift, scale))
