"""DALL-E style decoder-only generator (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation"),
which also reads images: captioning in the same model, as the "one next-token model over text and
image tokens, both ways" line of work does (Chameleon, Janus, Emu).

One causal transformer over the concatenation [text tokens; image tokens]. Text and image keep
separate vocabularies: separate embeddings and separate output heads, so image positions can only
ever produce image ids (the logits are restricted to the image vocabulary by construction). The
loss weights text vs image prediction (DALL-E used 1/8 : 7/8). Residual/patch tokens with several
ids per position are flattened position-major, each step knowing its position and depth.

With ``caption_share`` > 0 a share of the training rows is in the other order, [begin; image;
text] (image -> text), the begin vector telling the transformer which order it reads (a
text-first row starts with its first word, as before); there the caption is the main target and
the image the secondary one (weighted as the text is in the other order). ``caption`` then draws
text for image ids, with the KV cache, one word at a time until eos.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trilemma import registry
from trilemma.generators.autoregressive_loop import AutoregressiveGenerator, Decoding
from trilemma.generators.sampling import SamplingConfig, make_generator, sample_logits
from trilemma.nn.transformer import TokenEmbedding, Transformer, TransformerConfig, init_text_embeddings, init_weights


@dataclass
class DalleConfig:
    dim: int = 256  # transformer width
    depth: int = 6  # blocks
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    cond_drop_prob: float = 0.1  # rows trained on the empty prompt, for classifier-free guidance
    text_loss_weight: float = 0.125  # weight of the secondary modality's prediction (text in text -> image, DALL-E: 1/8)
    caption_share: float = 0.0  # training rows in [image; text] order (captioning); 0 = text -> image only, 1 = only captioning


@registry.register("generator", "dalle")
class Dalle(AutoregressiveGenerator):
    Config = DalleConfig

    def __init__(self, config: DalleConfig, spec, text):
        super().__init__(spec, text)
        self.config = config
        self.text_len = text.max_length
        self.text_emb = nn.Embedding(text.vocab_size, config.dim)
        self.text_pos = nn.Embedding(self.text_len, config.dim)
        self.image_emb = TokenEmbedding(spec.vocab_size, config.dim, spec.max_tokens, spec.grid, spec.levels)
        tcfg = TransformerConfig(config.dim, config.depth, config.heads, config.mlp_ratio, config.dropout)
        self.transformer = Transformer(tcfg)
        self.text_head = nn.Linear(config.dim, text.vocab_size, bias=False)
        self.image_head = nn.Linear(config.dim, spec.vocab_size, bias=False)
        if not 0 <= config.caption_share <= 1:
            raise ValueError(f"`caption_share` must be in [0, 1], got {config.caption_share}")
        if config.caption_share > 0:  # starts an image-first row (a parameter only where that order trains)
            self.image_first = nn.Parameter(torch.zeros(config.dim))
        self.apply(init_weights)
        init_text_embeddings(self.text_emb, self.text_pos)
        if config.caption_share > 0:
            nn.init.normal_(self.image_first, std=0.02)

    def _embed_text(self, text_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Text ids [B, n] at text positions start..start+n-1 -> [B, n, dim]."""
        positions = torch.arange(start, start + text_ids.shape[1], device=text_ids.device)
        return self.text_emb(text_ids) + self.text_pos(positions)

    def forward(self, image_ids: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher-forced losses for flat image ids [B, M] and text ids [B, L]: each row in text ->
        image order, or with probability ``caption_share`` in image -> text order."""
        share = self.config.caption_share
        first = torch.rand(image_ids.shape[0], device=image_ids.device) < share if 0 < share < 1 else None
        if first is None:
            rows = [(~torch.zeros(image_ids.shape[0], dtype=torch.bool, device=image_ids.device), share == 1)]
        else:
            rows = [(~first, False), (first, True)]
        loss, logged = 0.0, {}
        for keep, image_first in rows:
            if not keep.any():
                continue
            part = (self._image_to_text if image_first else self._text_to_image)(image_ids[keep], text_ids[keep])
            loss = loss + part.pop("loss") * keep.float().mean()  # each order weighted by its rows
            logged.update({k: v.detach() for k, v in part.items()})
        if first is not None and not first.any():  # the begin vector takes part every step (DDP expects each parameter)
            loss = loss + self.image_first.sum() * 0.0
        return {"loss": loss, **logged}

    def _text_to_image(self, image_ids: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        text_ids, dropped = self.drop_captions(text_ids)
        x = torch.cat([self._embed_text(text_ids), self.image_emb(image_ids[:, :-1])], dim=1)
        h = self.transformer(x, causal=True)
        L = text_ids.shape[1]
        image_loss = F.cross_entropy(self.image_head(h[:, L - 1 :]).float().transpose(1, 2), image_ids)
        text_targets = text_ids[:, 1:].masked_fill(dropped[:, None], self.text.pad_id)
        text_loss = self._text_loss(h[:, : L - 1], text_targets)
        w = self.config.text_loss_weight
        return {"loss": (w * text_loss + image_loss) / (1 + w), "image_loss": image_loss, "text_loss": text_loss}

    def _image_to_text(self, image_ids: torch.Tensor, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """[begin; image; text[:-1]]: the image predicted from the begin vector on (unconditional),
        every caption word (the first one too) from the whole image."""
        m = image_ids.shape[1]
        h = self.transformer(torch.cat([self._image_first_start(image_ids.shape[0]), self.image_emb(image_ids),
                                        self._embed_text(text_ids[:, :-1])], dim=1), causal=True)
        image_loss = F.cross_entropy(self.image_head(h[:, :m]).float().transpose(1, 2), image_ids)
        caption_loss = self._text_loss(h[:, m:], text_ids)
        w = self.config.text_loss_weight
        return {"loss": (caption_loss + w * image_loss) / (1 + w), "caption_loss": caption_loss,
                "image_loss_unconditional": image_loss}

    def _image_first_start(self, batch: int) -> torch.Tensor:
        return self.image_first.expand(batch, 1, -1)

    def _text_loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the text head at ``h`` [B, n, dim] against ``targets`` [B, n], padding left out."""
        logits = self.text_head(h).float()
        if not (targets != self.text.pad_id).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=self.text.pad_id)

    # ------------------------------------------------------------------ sampling (autoregressive_loop)

    def start_decoding(self, rows: torch.Tensor, use_cache: bool) -> tuple[Decoding, torch.Tensor]:
        """The prompt rows through the transformer (into the cache): the last position predicts image id 0."""
        prefix = self._embed_text(rows)
        cache = self.transformer.new_cache() if use_cache else None
        h = self.transformer(prefix, causal=True, cache=cache, max_len=prefix.shape[1] + self.image_len)
        return Decoding(prefix, cache), h

    def decode_step(self, state: Decoding, drawn: torch.Tensor) -> torch.Tensor:
        """Image ids drawn so far [R, j] after the prompt: only the newest into the cache, or all."""
        j = drawn.shape[1]
        if state.cache is not None:
            return self.transformer(self.image_emb(drawn[:, -1:], start=j - 1), causal=True, cache=state.cache)
        return self.transformer(torch.cat([state.context, self.image_emb(drawn)], 1), causal=True)


    # ------------------------------------------------------------------ captioning

    def check_request(self, sampling: SamplingConfig, known: torch.Tensor | None, batch: int) -> None:
        if self.config.caption_share == 1:
            raise ValueError("this generator was trained on image -> text only (`caption_share` 1): it draws no "
                             "images; train with `caption_share` below 1 for text -> image")
        super().check_request(sampling, known, batch)

    @torch.no_grad()
    def caption(self, image_ids: torch.Tensor, sampling: SamplingConfig | None = None) -> torch.Tensor:
        """Text ids [B, text length] (words, eos, then padding) for flat image ids [B, M], one word at
        a time through the KV cache after [begin; image] (``sampling``: temperature, top_k, top_p,
        seed; greedy by default). A row ends at its eos (the last position is always eos)."""
        if self.config.caption_share == 0:
            raise ValueError("this generator was trained on text -> image only (`caption_share` 0): it reads no "
                             "images; train with `caption_share` > 0 (e.g. 0.5) to caption")
        sampling = SamplingConfig(temperature=0) if sampling is None else sampling
        if sampling.cfg_scale != 1 or sampling.budget is not None or sampling.steps is not None:
            raise ValueError("captioning takes temperature, top_k, top_p and seed; not `sampling.cfg_scale`, "
                             "`sampling.budget` or `sampling.steps`")
        if tuple(image_ids.shape[1:]) != (self.image_len,):
            raise ValueError(f"`image_ids` must be [B, {self.image_len}] flat ids of this generator's tokenizer, "
                             f"got {tuple(image_ids.shape)}")
        self.eval()
        b, length, device = image_ids.shape[0], self.text.max_length, image_ids.device
        gen = make_generator(sampling.seed, device)
        cache = self.transformer.new_cache()
        h = self.transformer(torch.cat([self._image_first_start(b), self.image_emb(image_ids)], 1), causal=True,
                             cache=cache, max_len=self.image_len + length)
        out = torch.full((b, length), self.text.pad_id, dtype=torch.long, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        for j in range(length):
            logits = self.text_head(h[:, -1]).float()
            logits[:, self.text.pad_id] = float("-inf")  # padding is never a word
            if j == length - 1:  # the last position holds eos, as encode writes it
                logits[:] = float("-inf")
                logits[:, self.text.eos_id] = 0.0
            ids = sample_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p, gen)
            out[:, j] = ids.masked_fill(done, self.text.pad_id)
            done |= ids == self.text.eos_id
            if done.all():
                break
            h = self.transformer(self._embed_text(out[:, j : j + 1], start=j), causal=True, cache=cache)
        return out


def _preset(name: str, description: str, **fields: Any) -> None:
    registry.register_preset("generator", name, "dalle", description, **fields)


_preset("dalle-shapes", "CPU: 4 blocks x 256 wide, for 32x32 shapes tokens", dim=256, depth=4, heads=4)
_preset("dalle-tiny", "test size: 2 blocks x 64 wide", dim=64, depth=2, heads=2)
_preset("dalle-base", "GPU: 24 blocks x 1024 wide (~300M), for 256x256 f16 tokens", dim=1024, depth=24, heads=16)
