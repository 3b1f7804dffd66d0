"""The sparse promptable tokenizer: tokens on demand, a token budget, and box / point prompts.

A 1D tokenizer with K ordered tokens (TiTok, Yu et al. 2024, "An Image is Worth 32 Tokens for
Reconstruction and Generation"), ordered coarse to fine by tail ("nested") dropout as in FlexTok
(Bachmann et al. 2025) and One-D-Piece (Miwa et al. 2025): in training the decoder sees a random
prefix of k tokens, so any prefix decodes to a whole image. What none of them take is a region:
like Segment Anything (Kirillov et al. 2023), a prompt encoder turns box corners and points into
Fourier features of their coordinates plus learned type embeddings ("no prompt" is a learned
embedding too, not a special case), and both the K latent queries (which read the image patches
through self-attention) and the decoder see those prompt tokens. Training samples budgets and
random prompts and weights the reconstruction toward the prompted region, so a prompted encoder
learns to spend its first tokens there. With ``box_crop`` the encoder also reads a prompted box's
content resampled to a fixed grid (RoIAlign, as Mask R-CNN reads a region), and the decoder pastes a
grid drawn from the tokens back into the box: a box is described at its own scale wherever it lies.
With ``region_share`` that holds by construction: a share of the budget tokenizes the prompt's region
cropped to the full size (a foveated glimpse), the rest the whole image, and decode pastes one into
the other.

    tok.encode(images, Prompt(budget=8, boxes=torch.tensor([[[.1, .1, .5, .5]]])))  -> Tokens(ids [B, 8], prompt)
    tok.decode(tokens)                                                  -> images (prompt from tokens)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import nn

from trilemma import checkpoint, registry
from trilemma.nn.transformer import Transformer, TransformerConfig, init_weights
from trilemma.tokenizers.base import Tokenizer, TokenizerOutput
from trilemma.tokenizers.prompts import (
    PromptEncoder,
    box_crops,
    check_prompt,
    crop_images,
    paste_crops,
    paste_images,
    prompt_regions,
    region_mask,
    region_positions,
)
from trilemma.tokenizers.vqvae import Decoder, Encoder, VQVAEConfig
from trilemma.tokens import Prompt, Tokens, TokenSpec


@dataclass
class PromptableConfig:
    image_size: int = 32
    patch: int = 4  # pixels per patch side: (image_size / patch)^2 patches; a power of 2
    conv_channels: int = 32  # width of the convolutional stem and head (vqvae's Encoder / Decoder)
    dim: int = 128  # transformer width
    encoder_depth: int = 4
    decoder_depth: int = 4
    heads: int = 4
    num_tokens: int = 32  # K: the full budget
    # VQ, not FSQ: they learn alike here, but FSQ's 64,000 codes would bloat every generator's vocabulary.
    quantizer: dict[str, Any] = field(default_factory=lambda: {"name": "vq", "codebook_size": 512, "codebook_dim": 8})
    fourier_bands: int = 16  # random Fourier features per coordinate pair (SAM)
    max_boxes: int = 1
    max_points: int = 4
    dense_prompt: bool = True  # prompts also as embeddings at the grid positions they cover (encoder and decoder)
    prompt_prob: float = 0.5  # training: the share of images given a random prompt (boxes or points)
    # Where training prompts sit: "content" (drawn by how far the image departs from its median there),
    # "uniform" (anywhere, without looking), "mixed" (each prompt either way, even odds).
    prompt_boxes: str = "content"
    box_sides: tuple[float, float] = (0.2, 0.5)  # training boxes' width and height, each uniform in this range (of the side)
    point_prob: float = 0.0  # training: the share of prompted images given 1..max_points points instead of 1..max_boxes boxes
    region_weight: float = 4.0  # training: extra squared-error weight inside a prompted box (or a point's disc)
    outside_weight: float = 0.0  # > 0: prompted images add this x the log of their error outside the box (a PSNR term)
    box_crop: int = 0  # > 0: a prompted box read and written at its own scale, box_crop^2 cells; 0 = off (old configs)
    # > 0: a prompted budget is split, this share of it (the first token included) tokenizing the prompt's
    # region cropped and resampled to the full image size, the rest the whole image unprompted; 0 = off
    # (the prompt goes through the learned paths above). encode / decode only: training is unchanged.
    region_share: float = 0.0
    tail_dropout: bool = True  # training: a random budget per step, so every prefix decodes
    budget_sampling: str = "uniform"  # that budget: "uniform" over 1..K or "log" (log-uniform: small ones more often)
    full_budget_prob: float = 0.75  # share of training steps at K (otherwise the late tokens learn slowest)
    full_budget_weight: float = 0.0  # > 0: each training step also decodes all K, its error at this weight (Matryoshka)
    base: str | dict | None = None  # frozen continuous AE whose latents the tokens describe (directory or config); None: pixels


@registry.register("tokenizer", "promptable")
class PromptableTokenizer(Tokenizer):
    Config = PromptableConfig
    promptable = True

    def __init__(self, config: PromptableConfig):
        super().__init__()
        if config.image_size % config.patch:
            raise ValueError(f"image_size {config.image_size} is not divisible by patch {config.patch}")
        self.config = c = config
        if c.budget_sampling not in ("uniform", "log"):
            raise ValueError(f"budget_sampling must be 'uniform' or 'log', got {c.budget_sampling!r}")
        if not 0 <= c.full_budget_prob <= 1:
            raise ValueError(f"full_budget_prob must be in [0, 1], got {c.full_budget_prob!r}")
        if c.prompt_boxes not in ("content", "uniform", "mixed"):
            raise ValueError(f"prompt_boxes must be 'content', 'uniform' or 'mixed', got {c.prompt_boxes!r}")
        lo, hi = c.box_sides
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"box_sides must be (lo, hi) with 0 < lo <= hi <= 1, got {c.box_sides!r}")
        if not 0 <= c.point_prob <= 1:
            raise ValueError(f"point_prob must be in [0, 1], got {c.point_prob!r}")
        if not 0 <= c.region_share <= 1:
            raise ValueError(f"region_share must be in [0, 1], got {c.region_share!r}")
        self.side = c.image_size // c.patch
        patches = self.side**2
        qcfg = dict(c.quantizer)
        qname = qcfg.pop("name", "vq")
        # FSQ rounds each channel: fed its own number of channels, it needs no projection of its own.
        qdim = len(qcfg.get("levels", [])) if qname == "fsq" else c.dim
        self.quantizer = registry.build("quantizer", qname, dim=qdim or c.dim, **qcfg)
        if not self.quantizer.discrete or self.quantizer.levels != 1:
            raise ValueError("the promptable tokenizer needs a single-level discrete quantizer (fsq, vq or lfq)")
        blocks = lambda depth: TransformerConfig(c.dim, depth, c.heads)  # noqa: E731
        # A convolutional stem and head (hybrid ViTs' "conv stem"): a linear patch head stayed at the
        # mean image for 1,000 steps (docs/experiments.md, promptable architecture).
        levels = int(math.log2(c.patch))
        if 2**levels != c.patch:
            raise ValueError(f"patch must be a power of 2, got {c.patch}")
        if c.base is not None:
            self.base, c = _frozen_base(c)
            self.config = c
            latent, self.side = self.base.quantizer.latent_dim, self.base.grid[0]
            patches = self.side**2
            self.patch_in, self.patch_out = nn.Conv2d(latent, c.dim, 1), nn.Conv2d(c.dim, latent, 1)
            # Per-channel latent mean and std, measured on the first batch it sees (zeros until then).
            self.register_buffer("latent_mean", torch.zeros(latent, 1, 1))
            self.register_buffer("latent_std", torch.zeros(latent, 1, 1))
        else:
            self.base = None
            conv = VQVAEConfig(image_size=c.image_size, channels=c.conv_channels, channel_mult=(1,) + (2,) * levels)
            self.patch_in, self.patch_out = Encoder(conv, c.dim), Decoder(conv, c.dim)
        self.patch_pos = nn.Parameter(torch.zeros(patches, c.dim))
        self.queries = nn.Parameter(torch.zeros(c.num_tokens, c.dim))
        # A linear path beside the attention: each latent query starts as a learned weighted sum of the
        # patches, each decoder grid position as a weighted sum of the k tokens present. With tail dropout
        # it is a linear autoencoder with nested dropout, ordered as PCA is (Rippel et al. 2014), and it
        # decodes before attention has learned where to look (docs/experiments.md, promptable architecture).
        self.read = nn.Parameter(torch.randn(c.num_tokens, patches) * patches**-0.5)
        self.write = nn.Parameter(torch.randn(patches, c.num_tokens) * c.num_tokens**-0.5)
        if c.box_crop:  # the same two paths between the tokens and a prompted box's crop
            cells = c.box_crop**2
            self.read_crop = nn.Parameter(torch.randn(c.num_tokens, cells) * cells**-0.5)
            self.write_crop = nn.Parameter(torch.randn(cells, c.num_tokens) * c.num_tokens**-0.5)
            self.crop_in_pos, self.crop_out_pos = nn.Parameter(torch.zeros(cells, c.dim)), nn.Parameter(torch.zeros(cells, c.dim))
        self.encoder = Transformer(blocks(c.encoder_depth))
        self.to_quantizer = nn.Linear(c.dim, self.quantizer.in_channels)
        self.from_quantizer = nn.Linear(self.quantizer.latent_dim, c.dim)
        self.token_pos = nn.Parameter(torch.zeros(c.num_tokens, c.dim))
        self.mask_token = nn.Parameter(torch.zeros(c.dim))
        self.decoder = Transformer(blocks(c.decoder_depth))
        self.prompts = PromptEncoder(c.dim, c.fourier_bands, c.max_boxes, c.max_points)
        for name, module in self.named_children():
            if name != "base":  # the base keeps its trained weights
                module.apply(init_weights)
        for p in (self.patch_pos, self.queries, self.token_pos, self.mask_token):
            nn.init.normal_(p, std=0.02)
        if c.box_crop:
            for p in (self.crop_in_pos, self.crop_out_pos):
                nn.init.normal_(p, std=0.02)
        # Unit-scale quantizer inputs: at the transformer init's std 0.02 every token rounded to FSQ's
        # centre code and training stayed there (docs/experiments.md, promptable architecture).
        nn.init.normal_(self.to_quantizer.weight, std=c.dim**-0.5)

    @property
    def spec(self) -> TokenSpec:
        return TokenSpec("discrete", self.config.num_tokens, vocab_size=self.quantizer.vocab_size, ordered=True)

    # ------------------------------------------------------------------ the two halves

    def train(self, mode: bool = True) -> "PromptableTokenizer":
        super().train(mode)
        if self.base is not None:
            self.base.eval()  # frozen: its latents are the posterior mean, never a sample
        return self

    @torch.no_grad()
    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        """The base autoencoder's latents of ``images``, normalised per channel (measured once)."""
        z = self.base.quantizer(self.base.encoder(images.float())).quantized  # the posterior mean: base is in eval
        if not bool(self.latent_std.any()):
            self.latent_mean.copy_(z.mean((0, 2, 3))[:, None, None])
            self.latent_std.copy_(z.std((0, 2, 3)).clamp_min(1e-6)[:, None, None])
        return (z - self.latent_mean) / self.latent_std

    def _grid_in(self, images: torch.Tensor) -> torch.Tensor:
        return self.patch_in(self._latents(images) if self.base is not None else images)

    def _grid_out(self, grid: torch.Tensor) -> torch.Tensor:
        """The decoder's grid -> images; through the frozen base decoder when there is one."""
        if self.base is None:
            return self.patch_out(grid)
        return self.base.decoder(self.patch_out(grid).float() * self.latent_std + self.latent_mean)

    def _encode(self, images: torch.Tensor, prompt: Prompt | None) -> Any:
        b = images.shape[0]
        x = rearrange(self._grid_in(images), "b d h w -> b (h w) d") + self.patch_pos
        if self.config.dense_prompt:
            x = x + self.prompts.dense(prompt, b, self.side, images.device)
        queries = self.queries + torch.einsum("kp,bpd->bkd", self.read, x)
        inputs = [x]
        if self.config.box_crop:
            crop = box_crops(x, prompt, self.side, self.config.box_crop)
            queries = queries + torch.einsum("kc,bcd->bkd", self.read_crop, crop)
            inputs.append(crop + self.crop_in_pos)
        start = sum(t.shape[1] for t in inputs)
        h = self.encoder(torch.cat([*inputs, queries, self.prompts(prompt, b, images.device)], 1))
        z = self.to_quantizer(h[:, start : start + self.config.num_tokens])
        return self.quantizer(rearrange(z, "b k d -> b d k 1"))

    def _decode(self, latents: torch.Tensor, prompt: Prompt | None) -> torch.Tensor:
        """Quantized latents of a prefix [B, latent_dim, k, 1] -> images [B, 3, H, W]."""
        return self._grid_out(self._decode_grid(latents, prompt))

    def _decode_grid(self, latents: torch.Tensor, prompt: Prompt | None) -> torch.Tensor:
        """Quantized latents of a prefix [B, latent_dim, k, 1] -> the decoder's grid [B, dim, side, side]."""
        b, k = latents.shape[0], latents.shape[2]
        tokens = self.from_quantizer(rearrange(latents, "b d k 1 -> b k d")) + self.token_pos[:k]
        masks = self.mask_token + self.patch_pos + torch.einsum("pk,bkd->bpd", self.write[:, :k], tokens)
        if self.config.box_crop:
            crop = self.crop_out_pos + torch.einsum("ck,bkd->bcd", self.write_crop[:, :k], tokens)
            masks = masks + paste_crops(crop, prompt, self.side)
        if self.config.dense_prompt:
            masks = masks + self.prompts.dense(prompt, b, self.side, latents.device)
        h = self.decoder(torch.cat([masks, tokens, self.prompts(prompt, b, latents.device)], 1))
        return rearrange(h[:, : self.side**2], "b (h w) d -> b d h w", h=self.side)

    def _check(self, images: torch.Tensor, prompt: Prompt | None) -> None:
        self.check_images(images)
        c = self.config
        check_prompt(prompt, images.shape[0], c.num_tokens, c.max_boxes, c.max_points)

    # ------------------------------------------------------------------ interface

    @torch.no_grad()
    def encode(self, images: torch.Tensor, prompt: Prompt | None = None) -> Tokens:
        """The first ``prompt.budget`` tokens (default all K), ordered coarse to fine, carrying the prompt."""
        self._check(images, prompt)
        prompt = prompt if prompt is not None else Prompt()
        k = prompt.budget or self.config.num_tokens
        if self.config.region_share > 0:
            ids = self._encode_zoomed(images, prompt, k)
        else:
            ids = self._encode(images, prompt).ids[:, :k, 0]
        b = images.shape[0]  # a prompt given once for every image is stored per image
        per_image = {name: (t.expand(b, *t.shape[1:]) if t is not None else None)
                     for name, t in (("boxes", prompt.boxes), ("points", prompt.points), ("point_labels", prompt.point_labels))}
        return Tokens(ids=ids, prompt=Prompt(budget=k, **per_image))

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        """Images from any prefix of tokens; with a ``mask`` (per-image budgets) each budget is
        decoded on its own."""
        if tokens.ids is None:
            raise ValueError("the promptable tokenizer decodes ids; these tokens carry only latents")
        if tokens.mask is not None and not bool(tokens.mask.all()):
            return self._decode_ragged(tokens)
        if self.config.region_share > 0:
            return self._decode_zoomed(tokens.ids, tokens.prompt)
        latents = self.quantizer.ids_to_latents(tokens.ids[..., None])  # [B, D, k, 1]
        return self._decode(latents, tokens.prompt)

    # ------------------------------------------------------------------ the region at its own scale

    def _encode_zoomed(self, images: torch.Tensor, prompt: Prompt, k: int) -> torch.Tensor:
        """ids [B, k]: unprompted tokens of the whole image, and where the prompt asks for a region,
        its share of the positions (``region_positions``) taken by the tokens of that region cropped
        and resampled to the full size."""
        ids = self._encode(images, None).ids[:, :, 0]
        region = prompt_regions(prompt, images.shape[0], images.device)
        zoomed = (region >= 0).all(-1)
        if not bool(zoomed.any()):
            return ids[:, :k]
        at = region_positions(k, self.config.region_share).to(ids.device)
        crops = crop_images(images[zoomed], region[zoomed], self.image_size)
        rows = ids[zoomed, :k].clone()
        rows[:, at] = self._encode(crops, None).ids[:, : int(at.sum()), 0]
        rows[:, ~at] = ids[zoomed, : int((~at).sum())]
        ids = ids[:, :k].clone()
        ids[zoomed] = rows
        return ids

    def _decode_zoomed(self, ids: torch.Tensor, prompt: Prompt | None) -> torch.Tensor:
        """``_encode_zoomed``'s ids -> images: the region's tokens decoded and pasted into the region,
        the rest decoded as the whole image around it (with none, the region's mean colour)."""
        latents = lambda part: self.quantizer.ids_to_latents(part[..., None])  # noqa: E731
        region = prompt_regions(prompt, ids.shape[0], ids.device)
        zoomed = (region >= 0).all(-1)
        if not bool(zoomed.any()):
            return self._decode(latents(ids), None)
        at = region_positions(ids.shape[1], self.config.region_share).to(ids.device)
        out = torch.empty(ids.shape[0], 3, self.image_size, self.image_size, device=ids.device)
        if not bool(zoomed.all()):
            out[~zoomed] = self._decode(latents(ids[~zoomed]), None).float()
        rows = ids[zoomed]
        inner = self._decode(latents(rows[:, at]), None).float()
        if bool((~at).any()):
            around = self._decode(latents(rows[:, ~at]), None).float()
        else:
            around = inner.mean((2, 3), keepdim=True).expand_as(inner)
        out[zoomed] = paste_images(inner, region[zoomed], around)
        return out

    @torch.no_grad()
    def encode_to_quality(self, images: torch.Tensor, target_psnr: float, prompt: Prompt | None = None) -> Tokens:
        """Per image, the smallest budget k whose reconstruction reaches ``target_psnr`` dB (the
        full K when none does): ids [B, K] with ``mask`` marking each image's first k."""
        self._check(images, prompt)
        full = self.encode(images, Prompt(boxes=getattr(prompt, "boxes", None), points=getattr(prompt, "points", None),
                                          point_labels=getattr(prompt, "point_labels", None)))
        k_max = self.config.num_tokens
        chosen = torch.full((images.shape[0],), k_max, dtype=torch.long, device=images.device)
        for k in range(k_max, 0, -1):  # every k is checked: PSNR need not rise monotonically with k
            recon = self.decode(Tokens(ids=full.ids[:, :k], prompt=full.prompt)).clamp(-1, 1)
            mse = (recon.double() - images.double()).pow(2).flatten(1).mean(1)
            reached = 10 * torch.log10(4.0 / mse) >= target_psnr  # PSNR of [-1, 1] images (range 2)
            chosen = torch.where(reached, torch.full_like(chosen, k), chosen)
        mask = torch.arange(k_max, device=images.device)[None] < chosen[:, None]
        return Tokens(ids=full.ids, mask=mask, prompt=full.prompt, meta={"target_psnr": float(target_psnr)})

    def _decode_ragged(self, tokens: Tokens) -> torch.Tensor:
        counts = tokens.mask.sum(1)
        out = torch.empty(tokens.batch_size, 3, self.image_size, self.image_size, device=tokens.ids.device)
        for k in counts.unique().tolist():
            rows = (counts == k).nonzero()[:, 0]
            part = tokens[rows]
            out[rows] = self.decode(Tokens(ids=part.ids[:, :k], prompt=part.prompt))
        return out

    def forward(self, images: torch.Tensor, prompt: Prompt | None = None) -> TokenizerOutput:
        """Training: a random budget and random prompts unless given; the region term weights the
        squared error inside prompted boxes (``region_weight``)."""
        self._check(images, prompt)
        c = self.config
        if prompt is None and self.training:
            prompt = random_prompt(images, c)
        q = self._encode(images, prompt)
        k = (prompt.budget if prompt is not None and prompt.budget else c.num_tokens)
        if self.base is None:
            target, size = images, self.image_size
        else:
            # The loss is on the base's normalised latents; the pixels (through the frozen base
            # decoder, no gradient) are what the task logs and evaluates.
            target, size = self._latents(images), self.side
        region = region_mask(prompt, images.shape[0], size, images.device)
        losses = dict(q.losses)
        grid = self._decode_grid(q.quantized[:, :, :k], prompt)
        recon = self.patch_out(grid)
        if self.base is not None:
            losses["latent"] = (recon.float() - target).pow(2).mean()
        if region is not None:
            losses["region"] = self._region_loss(recon, target, region)
        if self.training and c.full_budget_weight > 0 and k < c.num_tokens:
            full = self.patch_out(self._decode_grid(q.quantized, prompt))
            error = (full.float() - target.float()).pow(2).mean()
            if region is not None:
                error = error + self._region_loss(full, target, region)
            losses["full_budget"] = c.full_budget_weight * error
        if self.base is not None:
            with torch.no_grad():
                recon = self._grid_out(grid)
        ids = q.ids[:, :k, 0]
        return TokenizerOutput(recon, Tokens(ids=ids, prompt=prompt), losses, q.usage)

    def _region_loss(self, recon: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """Errors inside prompted boxes count 1 + region_weight times, all over one mean (the plain
        term is the reconstruction loss, on pixels or latents), and with ``outside_weight`` prompted
        images add the log of their error outside the box. One mean, not the mean over the boxes
        alone, whose noise kept training at the mean image (docs/experiments.md, promptable)."""
        err = (recon.float() - target.float()).pow(2).mean(1, keepdim=True)
        loss = self.config.region_weight * (err * region).mean()
        if self.config.outside_weight > 0:
            outside = (1 - region).flatten(1)
            mse = (err.flatten(1) * outside).sum(1) / outside.sum(1).clamp_min(1)
            prompted = region.flatten(1).any(1)
            loss = loss + self.config.outside_weight * (mse.clamp_min(1e-8).log() * prompted).sum() / len(err)
        return loss


def _frozen_base(c: PromptableConfig) -> tuple[nn.Module, PromptableConfig]:
    """The base autoencoder (frozen) and the config that records it by its architecture: from a
    directory its config and weights, from a saved config the architecture (weights come with ours)."""
    if isinstance(c.base, str):
        directory = checkpoint.resolve_checkpoint(c.base)
        base = checkpoint.load(directory, kind="tokenizer")
        meta = checkpoint.read_config(directory, kind="tokenizer")
        c = dataclasses.replace(c, base={"name": meta["name"], "config": meta["config"]})
    else:
        if not isinstance(c.base, dict) or "name" not in c.base or "config" not in c.base:
            raise ValueError(f"base must be a tokenizer directory or {{'name': ..., 'config': ...}}, got {c.base!r}")
        base = registry.build("tokenizer", c.base["name"], **c.base["config"])
    if base.spec.kind != "continuous" or base.spec.grid is None:
        raise ValueError(f"base must be a continuous autoencoder with a latent grid (e.g. ae-f4-shapes), got {base.spec.kind} tokens")
    if base.image_size != c.image_size:
        raise ValueError(f"base takes {base.image_size}x{base.image_size} images but image_size is {c.image_size}")
    for p in base.parameters():
        p.requires_grad_(False)
    return base.eval(), c


def random_prompt(images: torch.Tensor, config: PromptableConfig) -> Prompt:
    """A training prompt for ``images``: a budget (with tail dropout, K with probability
    ``full_budget_prob``, else ``budget_sampling`` over 1..K; without it, K) and, with probability
    ``prompt_prob`` per image, a random prompt: 1..``max_boxes`` boxes (sides in ``box_sides``), or
    with probability ``point_prob`` 1..``max_points`` foreground points instead, placed by
    ``prompt_boxes``. Unused slots and unprompted images hold -1s, which only training builds (user
    prompts are checked to lie in [0, 1]): they see the "no prompt" embedding."""
    batch, device = images.shape[0], images.device
    k = config.num_tokens
    full = config.full_budget_prob > 0 and torch.rand(()).item() < config.full_budget_prob
    if not config.tail_dropout or full:
        budget = k
    elif config.budget_sampling == "uniform":
        budget = int(torch.randint(1, k + 1, ()).item())
    else:
        budget = int(round(2 ** (torch.rand(()).item() * math.log2(k))))
    if config.prompt_prob <= 0:
        return Prompt(budget=budget)
    lo, hi = config.box_sides
    boxes = []
    for _ in range(config.max_boxes):
        size = torch.rand(batch, 2, device=device) * (hi - lo) + lo
        corner = torch.minimum((_places(images, config.prompt_boxes) - size / 2).clamp_min(0), 1 - size)
        boxes.append(torch.cat([corner, corner + size], -1))
    boxes = torch.stack(boxes, 1)  # [B, max_boxes, 4]
    prompted = torch.rand(batch, device=device) < config.prompt_prob
    if config.max_boxes > 1:  # 1..max_boxes of them
        boxes[torch.arange(config.max_boxes, device=device) >= torch.randint(1, config.max_boxes + 1, (batch, 1))] = -1.0
    if config.point_prob <= 0:
        boxes[~prompted] = -1.0
        return Prompt(budget=budget, boxes=boxes)
    by_points = prompted & (torch.rand(batch, device=device) < config.point_prob)
    points = torch.stack([_places(images, config.prompt_boxes) for _ in range(config.max_points)], 1)  # [B, P, 2]
    points[torch.arange(config.max_points, device=device) >= torch.randint(1, config.max_points + 1, (batch, 1))] = -1.0
    boxes[~prompted | by_points] = -1.0
    points[~by_points] = -1.0
    return Prompt(budget=budget, boxes=boxes, points=points)


def _places(images: torch.Tensor, how: str) -> torch.Tensor:
    """[B, 2] one random place (x, y) in [0, 1] per image: by ``content_points``, uniform, or each
    either way at even odds ("mixed")."""
    if how == "content":
        return content_points(images)
    uniform = torch.rand(images.shape[0], 2, device=images.device)
    if how == "uniform":
        return uniform
    content = content_points(images)
    return torch.where(torch.rand(images.shape[0], 1, device=images.device) < 0.5, content, uniform)


def content_points(images: torch.Tensor, cells: int = 8) -> torch.Tensor:
    """[B, 2] random points (x, y) in [0, 1], one per image, drawn cell by cell of a ``cells`` x
    ``cells`` grid with probability growing with how far the cell departs from the image's median
    colour (uniform over a plain image)."""
    median = images.float().flatten(2).median(-1).values[..., None, None]
    far = nn.functional.adaptive_avg_pool2d((images.float() - median).abs().mean(1, keepdim=True), cells).flatten(1)
    cell = torch.multinomial(far + 1e-3, 1)[:, 0]
    xy = torch.stack([cell % cells, cell // cells], -1).float()
    return (xy + torch.rand_like(xy)) / cells


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("tokenizer", name, "promptable", description, **fields)


# How the presets train prompts and budgets: three images in four prompted, their box's error weighted 8,
# log-uniform budgets, all K tokens decoded at every step at weight 8, the outside term at 0.15. Each value
# was measured against its neighbours: docs/experiments.md, "The recipe over --full's AE".
_PROMPT_TRAINING = dict(prompt_prob=0.75, region_weight=8.0, budget_sampling="log", full_budget_prob=0.0,
                        full_budget_weight=8.0, outside_weight=0.15)
# promptable-shapes' recipe (`trilemma train` takes it where no flag is given): 1600 steps of 32 at lr 2e-3,
# over an AE (from pixels it sat at the mean image): docs/experiments.md, learning rate and region_weight.
_preset("promptable-shapes", "CPU: 32 ordered 1D tokens (VQ 512 codes), box / point prompts, 32x32; train it over an AE (config field `base`: its directory)",
        recipe={"steps": 1600, "lr": 2e-3}, box_crop=4, **_PROMPT_TRAINING)
# Prompts that mean something on any image: one or two boxes of any size and aspect, or points, each
# placed on content or anywhere at even odds (docs/experiments.md, "Promptable on photographs").
_ANYWHERE = dict(max_boxes=2, prompt_boxes="mixed", box_sides=(0.15, 0.6), point_prob=0.3)
# Its recipe: 1600 steps over ae-f8-photos, chosen on val photos against 800 over an f4 base and against a heavier
# region weight; a prompt's region tokenized at its own scale (three tokens in four), trained without prompts, chosen
# on val over those learned prompt paths (docs/experiments.md, "Promptable on photographs").
_preset("promptable-photos", "CPU: 32 ordered 1D tokens (VQ 512 codes) of 64x64 photo crops; a box or point's region gets "
        "3 tokens in 4 at its own scale; train it over ae-f8-photos trained on your images (config field `base`: its directory)",
        recipe={"steps": 1600, "lr": 2e-3, "random_crop": 0.35}, image_size=64, box_crop=4, **_ANYWHERE,
        **{**_PROMPT_TRAINING, "prompt_prob": 0.0}, region_share=0.75)
_preset("promptable-tiny", "test size: 8 tokens, width 32", dim=32, encoder_depth=1, decoder_depth=1, heads=2, num_tokens=8,
        fourier_bands=4, conv_channels=8, quantizer={"name": "vq", "codebook_size": 64, "codebook_dim": 4}, box_crop=2)
_preset("promptable-256", "GPU: 128 ordered tokens (VQ 4096 codes), ViT-B-like halves on 16x16 patches of 256x256",
        image_size=256, patch=16, dim=768, encoder_depth=12, decoder_depth=12, heads=12, num_tokens=128, conv_channels=64,
        quantizer={"name": "vq", "codebook_size": 4096, "codebook_dim": 8}, fourier_bands=64, box_crop=8, **_ANYWHERE,
        **_PROMPT_TRAINING)
