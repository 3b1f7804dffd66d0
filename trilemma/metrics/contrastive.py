"""A small CLIP for any captioned dataset: prompt adherence where there is no ground truth.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP),
ICML 2021: an image tower and a text tower map into one embedding space, trained with the
symmetric InfoNCE loss (cross-entropy over the batch's image-caption similarity matrix, both ways)
and a learned temperature. Here both towers are tiny and trained on the evaluation dataset itself:
- image: the ``DomainFeatures`` CNN; its last feature map is flattened (not averaged) before
  the projection, because captions name positions ("at the top left") and a global average
  pool would have to smuggle "where" through its channels;
- text: word embeddings from the built-in ``TextTokenizer`` + learned positions + a tiny
  bidirectional transformer (word order binds colour to shape), masked mean pool, projection.

Both projections end in a BatchNorm without affine parameters before the unit normalisation. It
removes the direction every embedding shares at initialisation (captions share most of their
words): without it, short runs often collapsed every image and caption onto one point and never
left that plateau (R-precision at chance for 3 of 4 seeds); with it, 80 steps of 64 pairs reach
~99% R-precision@32 on shapes for every seed tried. In eval mode it is a fixed affine map.

Scores, on a trained model:
- ``clip_score``: CLIPScore (Hessel et al., EMNLP 2021) without its rescaling: mean cosine x 100,
  and no clip at 0 (negative cosines count, so an unrelated set can score below 0);
- ``r_precision``: R-precision as in AttnGAN (Xu et al., CVPR 2018): for each image, is its own
  caption ranked first among itself and ``candidates - 1`` random other captions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.data.text import TextTokenizer
from trilemma.metrics.features import DomainFeatures
from trilemma.nn.transformer import Transformer, TransformerConfig
from trilemma.registry import register


@register("features", "contrastive")
class ContrastiveModel(nn.Module):
    """Image and text towers into one ``embed_dim`` space; ``forward`` gives the InfoNCE loss."""

    @dataclass
    class Config:
        image_size: int = 32  # images of other sizes are resized to this
        channels: tuple[int, ...] = (32, 64, 128)  # image backbone widths before the last block
        image_dim: int = 256  # image backbone output channels
        text_dim: int = 128  # word embedding / transformer width
        text_depth: int = 2  # transformer blocks over the words (0 = bag of words)
        text_heads: int = 4
        embed_dim: int = 128  # shared embedding space
        init_temperature: float = 0.07  # CLIP's initial softmax temperature
        max_logit_scale: float = 100.0  # CLIP clips 1 / temperature here for stability

    def __init__(self, config: Config | None = None, *, text: TextTokenizer):
        super().__init__()
        self.config = c = config if config is not None else self.Config()
        self.text = text
        self.backbone = DomainFeatures(DomainFeatures.Config(channels=tuple(c.channels), dim=c.image_dim, image_size=c.image_size))
        side = c.image_size
        for _ in c.channels:  # every block after the first is a stride-2 3x3 conv: ceil(side / 2)
            side = -(-side // 2)
        self.image_norm = nn.LayerNorm(c.image_dim * side * side)
        self.image_proj = nn.Linear(c.image_dim * side * side, c.embed_dim)
        self.word_emb = nn.Embedding(text.vocab_size, c.text_dim)
        self.word_pos = nn.Embedding(text.max_length, c.text_dim)
        self.encoder = Transformer(TransformerConfig(dim=c.text_dim, depth=c.text_depth, heads=c.text_heads))
        self.text_proj = nn.Linear(c.text_dim, c.embed_dim)
        self.image_center = nn.BatchNorm1d(c.embed_dim, affine=False)
        self.text_center = nn.BatchNorm1d(c.embed_dim, affine=False)
        nn.init.normal_(self.word_pos.weight, std=0.02)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / c.init_temperature)))

    # -------------------------------------------------------------------------- persistence
    def checkpoint_context(self) -> dict[str, Any]:
        return {"text": self.text.to_dict()}

    @classmethod
    def context_from_checkpoint(cls, context: dict[str, Any], directory: Path) -> dict[str, Any]:
        return {"text": TextTokenizer.from_dict(context["text"])}

    # -------------------------------------------------------------------------- towers
    def _device(self) -> torch.device:
        return self.log_scale.device

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> unit embeddings [B, embed_dim]."""
        fmap = self.backbone.feature_map(images.to(self._device(), torch.float32))
        return F.normalize(self.image_center(self.image_proj(self.image_norm(fmap.flatten(1))).float()), dim=-1)

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Captions -> unit embeddings [B, embed_dim] (words past ``text.max_length`` are cut)."""
        ids = self.text.encode(list(captions)).to(self._device())
        positions = torch.arange(ids.shape[1], device=ids.device)
        real = ids != self.text.pad_id  # words and eos, not padding: neither attended nor pooled
        h = self.encoder(self.word_emb(ids) + self.word_pos(positions), key_mask=real)
        keep = real.unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1)
        return F.normalize(self.text_center(self.text_proj(pooled).float()), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.config.max_logit_scale)

    def forward(self, images: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
        """Symmetric InfoNCE: row i of the similarity matrix should pick caption i, and column i image i."""
        logits = self.logit_scale() * self.encode_images(images) @ self.encode_text(captions).T
        target = torch.arange(len(logits), device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        accuracy = (logits.argmax(1) == target).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}

    # -------------------------------------------------------------------------- scores
    @torch.inference_mode()
    def similarity(self, images: torch.Tensor, captions: list[str], batch_size: int = 256) -> torch.Tensor:
        """Cosine similarity of each image with its own caption, [B]."""
        if len(images) != len(captions):
            raise ValueError(f"got {len(images)} images but {len(captions)} captions")
        img, txt = self._embed(images, captions, batch_size)
        return (img * txt).sum(-1)

    def _embed(self, images, captions, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.training
        self.eval()
        try:
            img = torch.cat([self.encode_images(x) for x in images.split(batch_size)]).cpu()
            txt = torch.cat([self.encode_text(captions[i : i + batch_size]) for i in range(0, len(captions), batch_size)]).cpu()
        finally:
            self.train(was_training)
        return img, txt

    def clip_score(self, images: torch.Tensor, captions: list[str], batch_size: int = 256) -> float:
        """Mean cosine(image, its caption) x 100 (CLIPScore without its w = 2.5 and max(., 0))."""
        return 100 * self.similarity(images, captions, batch_size).double().mean().item()

    @torch.inference_mode()
    def r_precision(
        self, images: torch.Tensor, captions: list[str], candidates: int = 32, seed: int = 0, batch_size: int = 256
    ) -> float:
        """Fraction of images whose own caption beats ``candidates - 1`` other captions of the set.

        The distractors of image i are drawn uniformly (seeded) from the other captions; a
        distractor identical to caption i (duplicate captions) counts as a tie, which fails.
        Chance level is ``1 / candidates``.
        """
        n = len(images)
        if len(captions) != n:
            raise ValueError(f"got {n} images but {len(captions)} captions")
        if not 2 <= candidates <= n:
            raise ValueError(f"candidates must be in [2, {n}] (the number of images), got {candidates}")
        img, txt = self._embed(images, captions, batch_size)
        sims = img @ txt.T  # [N, N]: image i against every caption
        gen = torch.Generator().manual_seed(seed)
        # Distractors: candidates - 1 distinct indices != i, by shifting a draw from [0, n - 1).
        draws = torch.stack([torch.randperm(n - 1, generator=gen)[: candidates - 1] for _ in range(n)])
        rows = torch.arange(n)[:, None]
        others = draws + (draws >= rows).long()
        own = sims.diagonal()[:, None]
        return (sims.gather(1, others) < own).all(1).double().mean().item()
