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

    tok.encode(images, Prompt(budget=8, boxes=torch.tensor([[[.1, .1, .5, .5]]])))  -> Tokens(ids [B, 8], prompt)
    tok.decode(tokens)                                                  -> images (prompt from tokens)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import nn

from trilemma import registry
from trilemma.nn.transformer import Transformer, TransformerConfig, init_weights
from trilemma.tokenizers.base import Tokenizer, TokenizerOutput
from trilemma.tokenizers.prompts import PromptEncoder, box_crops, box_mask, check_prompt, paste_crops
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
    # VQ by default. FSQ's tokens once collapsed to one code within 30 steps (inputs at the
    # transformer init's scale all rounded to the centre code); with unit-scale inputs (below) FSQ
    # 8-8-8-5-5-5 learned as VQ does (on ae-f4 latents, 400 steps of 32: 16.4 against 16.3 dB), but
    # its 64,000 codes would make every generator's vocabulary 125x larger than VQ's 512.
    quantizer: dict[str, Any] = field(default_factory=lambda: {"name": "vq", "codebook_size": 512, "codebook_dim": 8})
    fourier_bands: int = 16  # random Fourier features per coordinate pair (SAM)
    max_boxes: int = 1
    max_points: int = 4
    # Prompts also as dense embeddings added at the grid positions they cover (PromptEncoder.dense),
    # beside the prompt tokens, in both the encoder and the decoder. Measured (VQ on ae-f4 latents,
    # 300 steps of 32): 18.2 dB at the full budget against 17.6 without; with uniform training
    # boxes no gain inside the box (content boxes, below, brought it).
    dense_prompt: bool = True
    # Training: the share of images given a random box. Measured (the presets' recipe otherwise, over
    # --full's AE, as the table at ``outside_weight``; PSNR at k = 1 / 2 / 4 / 8 / 16 / 32, the box's
    # gain inside and the change outside at k = 1 / 2 / 4 / 8, --budget auto at 20 dB):
    #   0.5   15.7 / 16.6 / 18.4 / 21.4 / 25.1 / 30.2  in +4.9 / +4.7 / +4.1 / +2.3  out +3.4 / +3.6 / +1.9 / -0.5  auto 100%
    #   0.75  15.5 / 16.0 / 17.5 / 21.1 / 24.8 / 30.3  in +6.5 / +6.7 / +6.1 / +3.3  out +3.8 / +3.8 / +1.6 / -0.9  auto 99.6%
    # At 0.75 the prompted tokens read 0.8-1.4 dB more inside the box at every k <= 8 (18.0 against
    # 17.2 dB at k = 8) and the unprompted curve 0.2-0.9 dB less at k = 1-16, the full budget the
    # same: the presets take 0.75, the one recipe that met the box's +3 dB at k = 8 (K/4) on the bench's
    # 500 test images; on --full's 500 study images (runs/full3) it read +2.6 dB there, so the margin
    # was thin (at lr 2e-3 the presets also weight the box 8: the table below ``_PROMPT_TRAINING``).
    prompt_prob: float = 0.5
    # Where training boxes go: "content" centres them where the image departs from its median colour
    # (where users point: at objects, not at the background), "uniform" anywhere. Measured (this
    # preset on ae-f4 latents, 1600 steps of 32, the first object's cell as the prompt): with the box,
    # +1.4 / +1.3 / +1.1 / +0.4 dB inside that cell at k = 1 / 2 / 4 / 8 (uniform: +0.0) and +0.1 to
    # +1.5 dB outside; unprompted, 0.5 dB lower at the full budget (21.6 against 22.1 dB).
    prompt_boxes: str = "content"
    region_weight: float = 4.0  # training: extra squared-error weight inside a prompted box (the presets: 8, at ``_PROMPT_TRAINING``)
    # > 0: prompted images also add this weight x the log of their squared error outside the box (a
    # PSNR term: what a box costs outside is judged in dB, and there the error is small enough that
    # squared error hardly weighs it: without it the outside lost 2 dB at k = 8 even on images whose
    # only object was in the box). Measured (full_budget_weight 8, log budgets, half prompted, over
    # --full's AE, as the table at ``full_budget_weight``; PSNR at k = 1 / 2 / 4 / 8 / 16 / 32, the
    # box's gain inside and the change outside at k = 1 / 2 / 4 / 8, --budget auto at 20 dB):
    #   0     15.7 / 16.5 / 18.5 / 21.9 / 25.3 / 30.1  in +5.7 / +5.5 / +4.5 / +2.1  out +2.2 / +2.3 / -1.0 / -1.9  auto 99.8%
    #   0.15  15.7 / 16.6 / 18.4 / 21.4 / 25.1 / 30.2  in +4.9 / +4.7 / +4.1 / +2.3  out +3.4 / +3.6 / +1.9 / -0.5  auto 100%
    #   0.5   15.7 / 16.6 / 18.3 / 20.9 / 24.7 / 29.5  in +3.5 / +3.5 / +2.9 / +1.8  out +4.6 / +4.6 / +2.3 / +0.1  auto 99.8%
    # The presets take 0.15: the outside gains at k <= 4 and stays within 0.5 dB at k = 8, for 0.4-0.8
    # dB of the box's gain at k <= 4 (then three images in four prompted, ``prompt_prob``).
    outside_weight: float = 0.0
    # Box crops (RoIAlign, He et al. 2017, "Mask R-CNN"): the encoder's grid inside a prompted box,
    # resampled to box_crop x box_crop cells, joins the encoder's input and has its own linear read
    # into the latent queries; the decoder draws a box_crop x box_crop grid from its tokens and pastes
    # it into the box (bilinear, in box coordinates). Tokens can then describe a box's content at the
    # box's own scale wherever it lies, which the dense and token prompts alone must learn from
    # absolute positions. 0 = off (the architecture before it; saved configs without it load so).
    # Measured (this preset on the demo's AE, 1600 steps of 32, fp32, 500 held-out images, the first
    # object's cell as the box; PSNR at k = 1 / 2 / 4 / 8 / 16 / 32, the box's gain inside and the
    # change outside at k = 1 / 2 / 4 / 8, --budget auto at 20 dB):
    #   off                 15.9 / 16.3 / 17.3 / 20.4 / 22.6 / 23.8 dB  inside +1.0 / +1.1 / +1.1 / +0.5  outside +0.9 / +0.7 / +0.5 / +0.2  auto 89%
    #   4                   15.5 / 15.9 / 17.0 / 19.7 / 21.7 / 22.9     +2.9 / +3.0 / +2.6 / +1.4          -0.0 / -0.4 / -1.0 / -2.0          79%
    #   4, region_weight 2  15.7 / 16.0 / 17.1 / 20.4 / 22.3 / 23.4     +1.7 / +1.8 / +1.7 / +0.5          +0.5 / +0.6 / -0.2 / -1.5          85%
    #   4, prompt_prob 0.25 15.6 / 16.0 / 17.1 / 20.4 / 22.5 / 23.7     +1.7 / +1.8 / +2.0 / +0.9          +0.2 / +0.5 / -0.2 / -1.7          88%
    # The presets took the last at first: the crops learn what a box asks for at every budget, and
    # prompting a quarter of the images kept the unprompted tokens within 0.4 dB of "off" (the full
    # budget 0.3 dB below the same network without tail dropout, 24.0 dB, against 1.1 with half of
    # them prompted). Over a better AE (39.8 dB, --full's; runs/full2) that preset read 15.5 -> 27.0
    # dB, the box +3.7 / +3.7 / +3.4 / +1.1 dB inside and -0.8 / +0.6 / -2.4 / -3.2 outside, but
    # 2.8 dB under its unordered twin (29.7 dB). With the full budget decoded at every step
    # (``full_budget_weight``, at weight 1) half the images prompted against a quarter costs the
    # unprompted curve 0.0-0.4 dB and lifts the box's gain at k = 4 / 8 from +2.8 / +0.4 to +4.0 /
    # +1.4 dB; the presets now prompt half.
    box_crop: int = 0
    tail_dropout: bool = True  # training: a random budget per step, so every prefix decodes
    # That budget: "uniform" over 1..K, or "log" (log-uniform: mean ~K/3, small budgets far more
    # often). Measured (FSQ 8-8-8-5-5-5 on ae-f4 latents, 300 steps of 32): uniform 18.3 dB at the
    # full budget, log 17.6, and the same at k = 1 and 4 (15.2-15.4, 16.5 dB). With the full budget
    # decoded at every step (``full_budget_weight`` 8, table below) log lifts k = 1 / 2 / 4 / 8 to
    # 15.7 / 16.5 / 18.5 / 21.9 dB from 15.5 / 16.3 / 17.8 / 21.4, and K to 30.1 from 29.9.
    budget_sampling: str = "uniform"
    # Share of training steps at the full budget K, whatever ``budget_sampling`` draws otherwise.
    # Under uniform budgets token j is decoded in only (K - j + 1) / K of the steps (the last token
    # in 1 of 32), so the late tokens, which carry the fine detail, learn slowest. Measured (this
    # preset on the demo's AE, 1600 steps of 32, fp32, 500 held-out images; PSNR at k = 1 / 2 / 4 /
    # 8 / 16 / 32; the cost of ordering against no tail dropout, 24.0 dB; --budget auto at 20 dB;
    # the box's gain inside at k = 1 / 2 / 4 / 8):
    #   0     15.8 / 16.5 / 17.8 / 20.0 / 20.8 / 20.9 dB   cost 3.1 dB   auto 59%   +1.4 / +1.3 / +1.0 / +0.3 dB
    #   0.5   15.8 / 16.0 / 17.1 / 19.7 / 21.4 / 22.5      cost 1.5      auto 75%   +1.2 / +1.5 / +1.4 / +0.5
    #   0.75  15.9 / 16.3 / 17.3 / 20.4 / 22.6 / 23.8      cost 0.2      auto 89%   +1.0 / +1.1 / +1.1 / +0.5
    #   0.9   15.6 / 16.0 / 16.7 / 18.9 / 21.6 / 23.7      cost 0.3      auto 87%   +0.4 / +0.5 / +0.5 / +0.4
    # Over --full's 39.8 dB AE the share traded the box's gain against the cost of ordering (0.75:
    # 3.8 dB; 0.9: 0.5 dB with a third of the gain); ``full_budget_weight`` (below) removes the trade,
    # and the presets use it with this share at 0.
    full_budget_prob: float = 0.75
    # > 0: each training step also decodes the full budget K beside the sampled prefix and adds its
    # reconstruction error at this weight (Matryoshka representation learning, Kusupati et al. 2022,
    # sums the losses of nested prefixes in one step): the last tokens learn at every step instead
    # of in ``full_budget_prob`` of them, so small budgets and prompts need not be drawn less often to
    # make room. On pixels (no ``base``) the task's terms score the prefix and this pass adds its
    # squared error. It costs a second decoder pass per step (1600 steps: 600 s against 430). Measured
    # (the shapes preset over --full's 39.8 dB AE, runs/full2, 1600 steps of 32, fp32, 500 held-out
    # images; PSNR at k = 1 / 2 / 4 / 8 / 16 / 32; the cost of ordering against the unordered twin,
    # 29.7 dB; the box's gain inside and the change outside at k = 1 / 2 / 4 / 8; --budget auto at 20
    # dB; half the training images prompted unless said, full_budget_prob 0 with a weight):
    #   prob 0.75, prompt 0.25   15.6 / 16.1 / 17.7 / 21.0 / 24.2 / 26.0  cost 3.8  in +3.4 / +3.4 / +2.2 / +0.7  out -1.0 / -0.9 / -3.1 / -3.0  auto 98%
    #   prob 0.9, prompt 0.25    15.6 / 16.1 / 16.8 / 19.4 / 24.5 / 29.2  cost 0.5  in +1.3 / +1.5 / +1.6 / +1.4  out +0.5 / +0.2 / -0.5 / -1.8  auto 100%
    #   weight 1, prompt 0.25    15.7 / 16.7 / 19.2 / 22.4 / 25.1 / 26.7  cost 3.0  in +4.5 / +4.1 / +2.8 / +0.4  out +0.4 / +0.3 / -1.7 / -2.7  auto 99%
    #   weight 1                 15.6 / 16.3 / 18.9 / 22.4 / 25.1 / 26.5  cost 3.3  in +5.8 / +5.6 / +4.0 / +1.4  out +1.9 / +1.6 / -0.2 / -2.3  auto 98%
    #   weight 3                 15.6 / 16.6 / 18.5 / 22.1 / 26.0 / 29.6  cost 0.1  in +4.9 / +4.8 / +4.5 / +2.3  out +1.7 / +1.8 / -1.0 / -2.2  auto 100%
    #   weight 8                 15.5 / 16.3 / 17.8 / 21.4 / 25.6 / 29.9  cost -0.2 in +4.3 / +4.4 / +4.2 / +2.1  out +2.2 / +1.8 / -0.5 / -2.0  auto 100%
    #   weight 3, log budgets    15.7 / 16.9 / 19.2 / 22.6 / 25.4 / 29.1  cost 0.6  in +6.2 / +5.6 / +4.4 / +1.5  out +3.3 / +2.8 / -0.7 / -3.0  auto 100%
    #   weight 8, log budgets    15.7 / 16.5 / 18.5 / 21.9 / 25.3 / 30.1  cost -0.3 in +5.7 / +5.5 / +4.5 / +2.1  out +2.2 / +2.3 / -1.0 / -1.9  auto 100%
    # Sampled alone, the full budget and the small ones compete for the steps; with the full budget
    # in every step at weight 3-8 the ordering is free, and prompting half the images (against a
    # quarter, at weight 1) lifts the box's gain at k = 4 / 8 from +2.8 / +0.4 to +4.0 / +1.4 dB for
    # 0.0-0.4 dB of the unprompted curve. The presets take the last row (the full budget 0.3 dB above
    # the unordered twin, the box +4.5 dB or more at k <= 4 with the outside within 1.0 dB) with
    # ``outside_weight`` 0.15, which holds the outside within 0.5 dB at k = 8 too.
    full_budget_weight: float = 0.0
    # A trained continuous autoencoder whose latent grid the tokens describe (FlexTok's recipe: 1D
    # tokens over a VAE's latents), frozen: a directory (`--set base=runs/ae`) when training, saved
    # as its config (its weights go with this model's). None: a convolutional stem and head trained
    # with the rest. Measured on shapes, VQ + tail dropout after 400 steps: 18.4 dB on ae-f4-shapes'
    # latents, 15.6 dB (the mean image) from pixels.
    base: str | dict | None = None


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
        if c.prompt_boxes not in ("content", "uniform"):
            raise ValueError(f"prompt_boxes must be 'content' or 'uniform', got {c.prompt_boxes!r}")
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
        # A convolutional stem and head around the transformers (the "conv stem" of hybrid ViTs):
        # measured on shapes, a linear patch embedding and head stayed at the mean image for 1,000
        # steps (15.6 dB), as a ViT autoencoder does early on; convolutions draw pixels from the start.
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
        # A linear path beside the attention: each latent query starts as a learned weighted sum of
        # the patches, and each grid position of the decoder as a weighted sum of the k tokens present. Trained
        # with tail dropout, this path alone is a linear autoencoder with nested dropout, which
        # orders its codes as PCA does (Rippel et al. 2014); attention refines it. Measured on shapes
        # latents, without quantization: 27.9 dB after 400 steps with it, 18.3 dB without (attention
        # alone has to learn where to look before anything decodes).
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
        # Unit-scale quantizer inputs: at the transformer init's std 0.02 every token rounded to
        # FSQ's centre code, the decoder learned to ignore its tokens, and training stayed there
        # (measured: 1 code of 1000 used, 15.6 dB after 750 steps).
        nn.init.normal_(self.to_quantizer.weight, std=c.dim**-0.5)

    @property
    def spec(self) -> TokenSpec:
        return TokenSpec("discrete", self.config.num_tokens, vocab_size=self.quantizer.vocab_size, sparse=True)

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
        b, n_patches = images.shape[0], self.side**2
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
        latents = self.quantizer.ids_to_latents(tokens.ids[..., None])  # [B, D, k, 1]
        return self._decode(latents, tokens.prompt)

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
        region = box_mask(prompt, images.shape[0], size, images.device)
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
        images add the log of their error outside the box. Measured (continuous 6-d bottleneck,
        150 steps, no tail dropout): the mean over the boxes alone, at weight 4, kept the latents at
        the mean image (error 0.92 of their variance against 0.43 without prompts), its noise
        swamping the rest; over one mean they learned (PSNR 17.4 dB against 15.5, 18.3 without prompts)."""
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
    import dataclasses

    from trilemma import checkpoint

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
    ``prompt_prob`` per image, one random box (``prompt_boxes``); the other images get none (a box
    of -1s, which only training builds: user prompts are checked to lie in [0, 1])."""
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
    size = torch.rand(batch, 2, device=device) * 0.3 + 0.2
    if config.prompt_boxes == "content":
        corner = torch.minimum((content_points(images) - size / 2).clamp_min(0), 1 - size)
    else:
        corner = torch.rand(batch, 2, device=device) * (1 - size)
    boxes = torch.cat([corner, corner + size], -1)[:, None]
    none = torch.rand(batch, device=device) >= config.prompt_prob
    boxes[none] = -1.0  # these images see the "no prompt" embedding, as unprompted encoding does
    return Prompt(budget=budget, boxes=boxes)


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


# How the presets train their prompts and budgets (config fields, measured beside
# ``full_budget_weight``, ``outside_weight``, ``prompt_prob`` and below): three images in four
# prompted, their box's error weighted 8 (``region_weight``), log-uniform budgets, the full budget
# decoded at every step at weight 8, and a log term for the error outside prompted boxes at 0.15.
_PROMPT_TRAINING = dict(prompt_prob=0.75, region_weight=8.0, budget_sampling="log", full_budget_prob=0.0,
                        full_budget_weight=8.0, outside_weight=0.15)
# promptable-shapes' training recipe (`trilemma train` takes it where no flag is given): 1600 steps of
# 32 at lr 2e-3, over an AE (from pixels it sat at the mean image after 400 steps). Measured over
# --full's AE (runs/full2), 500 held-out images; PSNR at k = 1 / 2 / 4 / 8 / 16 / 32, the box's gain
# inside and the change outside at k = 1 / 2 / 4 / 8, --budget auto at 20 dB (mean k for 1 / 2 / 3 shapes):
#   lr 1e-3, region_weight 4  15.5 / 16.0 / 17.5 / 21.1 / 24.8 / 30.3  in +6.5 / +6.7 / +6.1 / +3.3  out +3.8 / +3.8 / +1.6 / -0.9  k 4.0 / 8.9 / 15.4
#   lr 2e-3, region_weight 4  15.5 / 16.1 / 18.0 / 21.9 / 26.0 / 32.2  in +5.9 / +6.1 / +5.0 / +2.4  out +3.5 / +4.7 / +2.4 / -0.5  k 3.5 / 7.8 / 13.8
#   lr 2e-3, region_weight 6  15.5 / 15.9 / 17.1 / 21.0 / 25.5 / 31.9  in +6.4 / +7.0 / +6.6 / +3.8  out +2.9 / +3.5 / +2.6 / -0.8  k 4.2 / 9.4 / 15.0
#   lr 2e-3, region_weight 8  15.4 / 15.6 / 16.5 / 20.3 / 24.7 / 31.1  in +6.8 / +8.1 / +7.5 / +4.4  out +3.5 / +2.6 / +2.1 / -0.5  k 4.8 / 10.1 / 16.3
# (--budget auto reached 20 dB on 99.6-100% of images in every row; after 500 steps lr 2e-3 read 25.2 dB
# at K against 23.0 at 1e-3.) At 2e-3 the unprompted curve rises by up to 1.9 dB, but the box's gain at
# k = 8 (K/4) falls under 3 dB at weight 4: the unprompted tokens learn the box's content faster than
# the prompted ones. The presets take weight 8, the one with a margin on both box targets (+4.4 dB
# inside, -0.5 outside, where --full's study images read 0.7 dB less inside than the bench's before),
# for 0.6-0.8 dB of the unprompted curve at k >= 8 against weight 6 and 0.9 more tokens under
# --budget auto; the unordered twin at 2e-3 and weight 8 reads 31.5 dB, 0.4 above the ordered tokens.
_preset("promptable-shapes", "CPU: 32 ordered 1D tokens (VQ 512 codes), box / point prompts, 32x32; train it over an AE (--set base=DIR)",
        recipe={"steps": 1600, "lr": 2e-3}, box_crop=4, **_PROMPT_TRAINING)
_preset("promptable-tiny", "test size: 8 tokens, width 32", dim=32, encoder_depth=1, decoder_depth=1, heads=2, num_tokens=8,
        fourier_bands=4, conv_channels=8, quantizer={"name": "vq", "codebook_size": 64, "codebook_dim": 4}, box_crop=2)
_preset("promptable-256", "GPU: 128 ordered tokens (VQ 4096 codes), ViT-B-like halves on 16x16 patches of 256x256",
        image_size=256, patch=16, dim=768, encoder_depth=12, decoder_depth=12, heads=12, num_tokens=128, conv_channels=64,
        quantizer={"name": "vq", "codebook_size": 4096, "codebook_dim": 8}, fourier_bands=64, box_crop=8, **_PROMPT_TRAINING)
