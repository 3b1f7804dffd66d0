"""Training a token-conditioned decoder: images are tokenized on the fly by the frozen tokenizer and
the decoder learns to draw them back from their ids; the shared loop in ``loop.py`` runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trilemma import checkpoint, registry
from trilemma.data import load_dataset
from trilemma.generators.sampling import SamplingConfig
from trilemma.images import save_grid
from trilemma.metrics.scores import psnr
from trilemma.training.loop import ImageTask, TrainConfig, check_run_dir, init_distributed, train

# What `trilemma train decoder` uses when a flag is not given.
DEFAULTS = TrainConfig(steps=2000, batch_size=32, lr=5e-4)
EVAL_IMAGES = 64  # held-out images decoded (and pictured) at each evaluation
EVAL_SAMPLING = SamplingConfig(seed=0, steps=10)  # evaluation decodes: cheap and repeatable


class DecoderTask(ImageTask):
    """Denoising loss on images given their tokens; held-out PSNR beside the tokenizer's own decoder."""

    def __init__(self, decoder: nn.Module, tokenizer: nn.Module, dataset: Any, eval_images: torch.Tensor,
                 extra: dict[str, Any]):
        self.model = decoder
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.dataset = dataset
        self.eval_images = eval_images
        self.extra = extra

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.tokenizer.to(device)

    def loss(self, model: nn.Module, images: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        # Encoded in fp32 even under the loop's autocast: inference encodes in fp32, and ids drawn
        # from a bf16 encoder would be some the decoder never meets at inference.
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            ids = self.tokenizer.encode(images.float()).ids
        return model(images, ids)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        tokens = self.tokenizer.encode(self.eval_images)
        own = self.tokenizer.decode(tokens).clamp(-1, 1)
        ours = model.decode(tokens, EVAL_SAMPLING)
        grid = torch.cat([self.eval_images[:8], own[:8], ours[:8]]).cpu()
        save_grid(grid, Path(out_dir) / "samples" / f"decode_{step:06d}.png", nrow=8,
                  title="held-out images | the tokenizer's decoder | this decoder")
        return {"psnr": float(psnr(ours, self.eval_images).mean()), "tokenizer_psnr": float(psnr(own, self.eval_images).mean())}

    def checkpoint_extra(self) -> dict[str, Any]:
        return self.extra


def train_decoder(
    tokenizer: str | Path, data: str, out: Path, cfg: TrainConfig, preset: str = "token-diffusion-shapes",
    resume: bool = False, eval_images: int = EVAL_IMAGES, overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train decoder ``preset`` on the tokens of ``tokenizer`` (a run or checkpoint directory)."""
    out = Path(out)
    tok_dir = checkpoint.resolve_checkpoint(tokenizer)
    check_run_dir(out, resume)
    init_distributed()
    tok = checkpoint.load(tok_dir, kind="tokenizer")
    torch.manual_seed(cfg.seed)
    decoder = registry.build("decoder", preset, spec=tok.spec, image_size=tok.image_size, **(overrides or {}))
    dataset = load_dataset(data, split="train", size=tok.image_size, seed=cfg.seed, random_crop=cfg.random_crop)
    val = load_dataset(data, split="val", size=tok.image_size, seed=cfg.seed)
    held_out = torch.stack([val[i]["image"] for i in range(min(eval_images, len(val)))])
    extra = {"tokenizer": checkpoint.tokenizer_record(tok_dir), "data": data}
    return train(DecoderTask(decoder, tok, dataset, held_out, extra), cfg, out, resume=resume)
