"""What editing and reranking are worth, measured: how much of an image an edit keeps, and how much
reranking by a contrastive score lifts prompt adherence. Used by the demo's report."""

from __future__ import annotations

import math

import torch

from trilemma.generators.sampling import SamplingConfig
from trilemma.metrics.scores import psnr
from trilemma.tokenizers.prompts import box_mask
from trilemma.tokens import Prompt

MAX_DB = 10 * math.log10(4.0 / 1e-12)  # ~126 dB: a mean squared error of 1e-12 on [-1, 1] images


@torch.no_grad()
def edit_study(pipe, init: torch.Tensor, prompts: list[str], box: tuple[float, float, float, float],
               sampling: SamplingConfig | None = None) -> dict:
    """Redraw ``box`` of one ``init`` image [1, 3, H, W] for each prompt; compare with the init's own
    reconstruction outside the box (what an edit should keep) and inside it (what it redraws).

    Returns ``psnr_outside`` / ``psnr_inside`` (dB, mean over prompts; an identical region counts
    as ``MAX_DB``, so one untouched edit does not make the mean infinite),
    ``reconstruction`` [1, 3, H, W] and ``edited`` [len(prompts), 3, H, W]."""
    recon = pipe.tokenizer.decode(pipe.tokenizer.encode(init.to(pipe.device))).clamp(-1, 1).float().cpu()
    edited = pipe(prompts, sampling, known=pipe.known_ids(init, box))
    inside = box_mask(Prompt(boxes=torch.tensor([[box]], dtype=torch.float32)), 1, init.shape[-1], "cpu")
    ref = recon.expand_as(edited)

    def region_psnr(mask: torch.Tensor) -> float:
        return float(psnr(edited, ref, mask=mask).clamp(max=MAX_DB).mean())

    return {"psnr_outside": region_psnr(1 - inside), "psnr_inside": region_psnr(inside), "reconstruction": recon,
            "edited": edited, "psnr_full_recon": float(psnr(recon, init.float()).mean())}


@torch.no_grad()
def rerank_study(pipe, bench, scorer, candidates: int, n: int, sampling: SamplingConfig | None = None,
                 batch_size: int = 64) -> dict:
    """Prompt adherence (the shapes probe) of the first ``n`` benchmark prompts, drawn once and as
    the best of ``candidates`` by ``scorer`` at the same sampling seed: ``plain`` and ``reranked``
    dicts of the probe's scores, and the mean contrastive score of each."""
    if bench.probe is None:
        raise ValueError("the rerank study scores adherence with the shapes probe; use the shapes benchmark")
    prompts, attributes = bench.prompts[:n], bench.attributes[:n]
    plain = pipe(prompts, sampling, batch_size)
    best, best_scores = pipe.best_of(prompts, candidates, scorer, sampling, batch_size)
    plain_scores = (scorer.encode_images(plain) * scorer.encode_text(prompts)).sum(-1).float().cpu()
    return {"candidates": candidates, "n": len(prompts),
            "plain": bench.probe.score(plain, attributes), "reranked": bench.probe.score(best, attributes),
            "score_plain": float(plain_scores.mean()), "score_reranked": float(best_scores.mean())}
