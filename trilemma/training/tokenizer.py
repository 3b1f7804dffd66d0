"""Training a tokenizer: the ``Task`` the shared loop in ``loop.py`` runs for tokenizers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from torch import nn

from trilemma import checkpoint, registry
from trilemma.data import load_dataset
from trilemma.images import save_grid, side_by_side
from trilemma.metrics import scores
from trilemma.metrics.reconstruction import count_codes
from trilemma.tokenizers.base import Tokenizer
from trilemma.tokenizers.losses import LossConfig, TokenizerLoss
from trilemma.training.loop import ImageTask, TrainConfig, TrainingError, check_run_dir, init_distributed, train

# What `trilemma train tokenizer` uses when a flag is not given.
DEFAULTS = TrainConfig(steps=2000, batch_size=32, lr=4e-4)
EVAL_IMAGES = 256  # held-out images scored (and pictured) at each evaluation


class TokenizerTask(ImageTask):
    """Reconstruction + quantizer (+ perceptual, + adversarial) losses; evaluation on held-out images."""

    def __init__(self, tokenizer: Tokenizer, dataset: Any, loss: LossConfig, eval_images: torch.Tensor,
                 extra: dict[str, Any] | None = None):
        self.model = tokenizer
        self.loss_fn = TokenizerLoss(loss)
        self.critic = self.loss_fn.discriminator
        self.dataset = dataset
        self.eval_images = eval_images
        self.extra = extra or {}
        # (images, reconstructions) of each micro-batch the generator saw, for the critic's step after it
        self._for_critic: list[tuple[torch.Tensor, torch.Tensor]] = []

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.loss_fn.to(device)

    def loss(self, model: nn.Module, images: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        out = model(images)
        last_layer = getattr(getattr(model, "module", model), "last_layer", None)
        terms = self.loss_fn.generator_terms(images, out.recon, step, last_layer)
        terms.update(out.losses)
        if self.critic is not None:
            self._for_critic.append((images, out.recon.detach()))
        return {"loss": sum(terms.values()), **terms}

    def critic_loss(self, critic: nn.Module, images: torch.Tensor, step: int) -> dict[str, torch.Tensor] | None:
        real, recon = self._for_critic.pop(0)  # the loop asks in the order ``loss`` saw the micro-batches
        if not self.loss_fn.gan_active(step):
            return None
        return self.loss_fn.discriminator_terms(real, recon, critic)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        model.eval()
        recons, counts = [], None
        for chunk in self.eval_images.split(64):
            tokens = model.encode(chunk)
            recons.append(model.decode(tokens).clamp(-1, 1))
            counts = count_codes(tokens, model.spec, counts)  # [levels, vocab], None if continuous
        recon = torch.cat(recons)
        metrics = {"psnr": float(scores.psnr(recon, self.eval_images).mean())}
        if counts is not None:  # usage of each level's codebook, averaged over levels
            metrics["codebook_usage"] = sum(scores.codebook_usage(counts=c) for c in counts) / len(counts)
        grid = side_by_side(self.eval_images[:16].cpu(), recon[:16].cpu())
        save_grid(grid, Path(out_dir) / "samples" / f"recon_{step:06d}.png", nrow=8)
        return metrics

    def checkpoint_extra(self) -> dict[str, Any]:
        return self.extra


def train_tokenizer(
    preset: str, data: str, out: Path, cfg: TrainConfig, loss: LossConfig | None = None,
    size: int | None = None, resume: bool = False, eval_images: int = EVAL_IMAGES,
    overrides: dict[str, Any] | None = None, dataset: Any = None,
) -> dict[str, Any]:
    """Train tokenizer ``preset`` on ``data`` ('shapes' or a folder) into the run directory ``out``.

    ``overrides`` replace preset config fields; a dict value (the quantizer) is merged key by key.
    ``dataset``: the training images when not ``data``'s train split, e.g. a ``data.InMemory`` pool
    of it drawn once and shared by short runs (drawing shapes costs ~25% of a small tokenizer's
    step); ``data`` still names the data in the checkpoint and gives the held-out images."""
    init_distributed()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    fields = dict(overrides or {})
    if size:
        fields["image_size"] = size
    tokenizer = registry.build("tokenizer", preset, **fields)
    out = Path(out)
    if not tokenizer.trainable:
        if check_run_dir(out, resume=True):  # a file is refused there; a run here
            raise TrainingError(f"{out} already holds a run; choose a new `out` ({preset} has nothing to learn)")
        ranks = PartialState()  # one writer: every rank checked `out` above, the main one saves
        ranks.wait_for_everyone()
        if ranks.is_main_process:
            checkpoint.save(tokenizer, out / "model", extra={"step": 0, "preset": preset})
            print(f"{preset} has nothing to learn; saved it to {out / 'model'}")
        ranks.wait_for_everyone()
        return {"checkpoint": out / "model", "step": 0, "eval": {}}
    size = tokenizer.image_size
    if dataset is None:
        dataset = load_dataset(data, split="train", size=size, seed=cfg.seed, random_crop=cfg.random_crop)
    val = load_dataset(data, split="val", size=size, seed=cfg.seed)
    held_out = torch.stack([val[i]["image"] for i in range(min(eval_images, len(val)))])
    task = TokenizerTask(tokenizer, dataset, loss or LossConfig(), held_out, extra={"preset": preset, "data": data})
    return train(task, cfg, out, resume=resume)
