"""MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization"): masked
autoregression over a continuous tokenizer's latents, each token drawn by a small per-token
diffusion head instead of a softmax over a vocabulary.

A bidirectional transformer sees the latents, a learned [MASK] vector at masked positions, and
cross-attends to the prompt encoder (never to its padding); its output z at a position conditions
the diffusion head (``nn.diffusion_head``), an MLP that denoises that one token. Training masks a
fraction ``mask_schedule(r)`` of the tokens, r ~ U(0, 1) (Muse's schedule), and trains the head on
the masked tokens only with ``nn.diffusion``'s denoising loss, ``diffusion_batch_mul`` noise draws
per token (the head is cheap, the transformer is not). Sampling starts all masked and, in ``steps``
steps, reveals the tokens of a random order per row, as many each step as the schedule says, each
drawn by the head's denoising loop conditioned on z.

The head's noise schedule is ``NoiseScheduleConfig``'s fields with a ``head_`` prefix rather than
inherited: MAR's ``steps`` are its autoregressive steps (the sampling option ``steps`` sets them,
as Muse's decoding steps), which the head's own denoising steps would otherwise share a name with;
and config.json stays flat, like every generator's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from einops import repeat
from torch import nn

from trilemma import registry
from trilemma.generators.base import Generator
from trilemma.generators.latents import LatentNormalisationMixin
from trilemma.generators.masked import MaskedConfig
from trilemma.generators.sampling import SamplingConfig, mask_schedule, masked_count, random_mask
from trilemma.generators.text_encoder import TextEncoderMixin, TextEncoding
from trilemma.nn.diffusion import PREDICTIONS, SCHEDULERS, NoiseScheduleConfig, denoise, denoising_loss, make_scheduler
from trilemma.nn.diffusion_head import DiffusionHead, DiffusionHeadConfig
from trilemma.nn.transformer import (KVCache, TokenEmbedding, Transformer, TransformerConfig, init_text_embeddings,
                                     init_weights)
from trilemma.tokens import Tokens


@dataclass
class MarConfig(MaskedConfig):
    width: int = 256  # width of prompt encoder and image transformer
    heads: int = 4
    steps: int = 16  # default autoregressive steps (sampling option ``steps`` overrides)
    head_width: int = 256  # diffusion head: hidden width
    head_depth: int = 3  # diffusion head: residual AdaLN blocks
    # The head's noise schedule (NoiseScheduleConfig's fields): what it predicts, DDPM levels and
    # betas in training, the sampler and its steps for each token, and the x_0 bound in normalised
    # latents (unit std) applied while sampling.
    head_prediction: str = "sample"
    head_train_timesteps: int = 1000
    head_beta_schedule: str = "squaredcos_cap_v2"
    head_scheduler: str = "dpm++"  # "dpm++" or "ddim"; sampling option ``scheduler`` overrides
    head_steps: int = 20
    head_clip_x0: float = 3.0
    diffusion_batch_mul: int = 4  # noise draws per masked token in each training step

    def head_noise(self) -> NoiseScheduleConfig:
        """The head's fields as the ``NoiseScheduleConfig`` that ``nn.diffusion`` reads."""
        return NoiseScheduleConfig(self.head_prediction, self.head_train_timesteps, self.head_beta_schedule,
                                   self.head_scheduler, self.head_steps, self.head_clip_x0)


@registry.register("generator", "mar")
class Mar(LatentNormalisationMixin, TextEncoderMixin, Generator):
    Config = MarConfig
    accepts = ("continuous",)
    compiles = True  # condition, the transformer's pass (not the head's denoising)

    def __init__(self, config: MarConfig, spec, text):
        super().__init__(spec, text)
        _check_config(config)
        self.config = config
        def blocks(depth: int) -> TransformerConfig:
            return TransformerConfig(config.width, depth, config.heads, config.mlp_ratio, config.dropout)

        self._add_text_encoder(text.vocab_size, text.max_length, blocks(config.encoder_depth))
        self.transformer = Transformer(blocks(config.depth), context_dim=config.width)
        self.latent_proj = nn.Linear(spec.latent_dim, config.width)
        # [MASK] is the one id of a vocabulary-free token embedding, which also gives the positions
        # (row + column embeddings on a grid, one per position otherwise).
        self.image_emb = TokenEmbedding(0, config.width, spec.max_tokens, spec.grid, levels=1, extra_ids=1)
        self.apply(init_weights)
        init_text_embeddings(self.text_emb, self.text_pos)
        head = DiffusionHeadConfig(spec.latent_dim, config.width, config.head_width, config.head_depth)
        self.head = DiffusionHead(head)  # after ``init_weights``: it keeps MAR's initialisation
        self.noise_schedule = make_scheduler("ddpm", config.head_noise())
        self._add_latent_normalisation(spec.latent_dim)  # measured on the training set by ``fit``

    def model_input(self, tokens: Tokens) -> torch.Tensor:
        """Tokens -> normalised latents [B, N, D], what ``forward`` trains on."""
        shape = tuple(self.token_latents(tokens).shape[1:])
        if shape != (self.spec.max_tokens, self.spec.latent_dim):
            raise ValueError(f"`tokens` must hold {self.spec.max_tokens} latents of {self.spec.latent_dim} channels "
                             f"each, as the tokenizer's spec says; got {shape}")
        return self.normalise(tokens)

    def condition(self, x: torch.Tensor, masked: torch.Tensor, memory: TextEncoding,
                  cache: KVCache | None = None) -> torch.Tensor:
        """The head's conditions z [B, N, width] for normalised latents ``x`` [B, N, D] of which the
        ``masked`` [B, N] are hidden (their values never read), given the prompt encodings."""
        n = x.shape[1]
        mask_vector = self.image_emb.tok.weight[0]
        h = torch.where(masked[..., None], mask_vector, self.latent_proj(x))
        h = h + self.image_emb.position_embedding(torch.arange(n, device=x.device))
        return self.transformer(h, context=memory.states, context_mask=memory.mask, cache=cache)

    # ------------------------------------------------------------------ training

    def forward(self, x: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Denoising loss of the head on the masked tokens of normalised latents [B, N, D]
        (``model_input``) for text ids [B, L]."""
        text_ids, _ = self.drop_captions(text_ids)
        b, n, _ = x.shape
        masked = random_mask(b, n, self.config.schedule, x.device)
        z = self.condition(x, masked, self.encode_text(text_ids))
        draws = self.config.diffusion_batch_mul
        target = repeat(x[masked], "m d -> (r m) d", r=draws)
        cond = repeat(z[masked], "m w -> (r m) w", r=draws)
        loss = denoising_loss(lambda xt, t: self.head(xt, t, cond), self.noise_schedule, target,
                              self.config.head_prediction)
        return {"loss": loss, "masked_fraction": masked.float().mean().detach()}

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, text_ids: torch.Tensor, sampling: SamplingConfig | None = None,
               known: torch.Tensor | None = None) -> Tokens:
        """Latent tokens for text ids [B, L] in ``sampling.steps`` autoregressive steps (default
        ``config.steps``, at most one per token); also temperature, cfg_scale, seed, and
        ``sampling.scheduler``, the head's sampler (default ``config.head_scheduler``, run for
        ``config.head_steps``). top_k and top_p do not apply: there is no vocabulary.

        Each row reveals its tokens in a random order (from ``seed``), step k revealing as many as
        ``masked_count`` leaves masked: the schedule Muse decodes on. ``temperature`` scales the
        noise each token's denoising starts from (MAR's temperature): 0 starts it at the noise's
        mean, so given the order the tokens are deterministic; 1 is the trained distribution.
        """
        sampling, rows, gen = self.start_sampling(text_ids, sampling, known)  # refuses budget and known
        b, n, device = text_ids.shape[0], self.spec.max_tokens, text_ids.device
        steps = min(sampling.steps or self.config.steps, n)
        memory = self.encode_text(rows)
        scheduler = make_scheduler(sampling.scheduler or self.config.head_scheduler, self.config.head_noise())
        # Each position's place in its row's random order: tokens are revealed by place.
        place = torch.rand(b, n, generator=gen, device=device).argsort(-1).argsort(-1)
        cache = self.transformer.new_cache(cross_only=True)  # the prompt's keys and values, once per request
        x = torch.zeros(b, n, self.spec.latent_dim, device=device)
        masked = torch.ones(b, n, dtype=torch.bool, device=device)
        for step in range(steps):
            left = masked_count(step, steps, n, int(masked.sum(1).max()), self.config.schedule)
            reveal = masked & (place < n - left)  # the next tokens of each row's order
            z = self.run_step(self.condition, self.stack_rows(x, rows), self.stack_rows(masked, rows), memory, cache)
            x[reveal] = self.draw_tokens(z[self.stack_rows(reveal, rows)], int(reveal.sum()), sampling, scheduler, gen)
            masked &= ~reveal
        return self.to_tokens(x)

    def draw_tokens(self, z: torch.Tensor, count: int, sampling: SamplingConfig, scheduler: Any,
                    gen: torch.Generator | None) -> torch.Tensor:
        """``count`` tokens [count, D] drawn by the head's denoising loop, conditioned on ``z``:
        [count, width] for the prompts, or [2 * count, width] with the empty prompt's below when
        guided (each step's predictions then combined by ``guide``)."""
        noise = torch.randn((count, self.spec.latent_dim), generator=gen, device=z.device) * sampling.temperature

        def model(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.guide(self.head(self.stack_rows(xt, z), t, z).float(), count, sampling.cfg_scale)

        return denoise(model, scheduler, noise, self.config.head_steps, gen, self.config.head_clip_x0)


def _check_config(config: MarConfig) -> None:
    """Refuse, when the model is built, what would fail only in training or sampling."""
    mask_schedule(0.5, config.schedule)  # an unknown schedule names itself
    if config.head_prediction not in PREDICTIONS:
        raise ValueError(f"`head_prediction` must be one of {', '.join(PREDICTIONS)}, got {config.head_prediction!r}")
    if config.head_scheduler not in SCHEDULERS:
        raise ValueError(f"`head_scheduler` must be one of {', '.join(SCHEDULERS)}, got {config.head_scheduler!r}")
    for field in ("steps", "head_steps", "diffusion_batch_mul"):
        if getattr(config, field) < 1:
            raise ValueError(f"`{field}` must be >= 1, got {getattr(config, field)}")


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("generator", name, "mar", description, **fields)


_preset("mar-shapes", "CPU: 2 encoder + 4 image blocks x 256 wide, head 3 x 256, 16 steps on 8x8x4 latents "
        "(ae-f4-shapes)")
_preset("mar-tiny", "test size: 1 + 2 blocks x 32 wide, head 2 x 32, 4 steps of 4 head steps", width=32,
        encoder_depth=1, depth=2, heads=2, head_width=32, head_depth=2, steps=4, head_steps=4, diffusion_batch_mul=2)
_preset("mar-base", "GPU: 6 encoder + 12 image blocks x 768 wide (MAR-B-like), head 6 x 1024, 64 steps on 32x32x4 "
        "or 16x16x16 latents", width=768, encoder_depth=6, depth=12, heads=12, head_width=1024, head_depth=6,
        steps=64)
