"""One training loop for tokenizers and generators, on Hugging Face accelerate.

A ``Task`` says what is trained (``task.model``, an optional ``task.critic`` such as a GAN
discriminator with its own optimizer), where the data comes from (``task.dataset`` +
``task.collate``) and how to score it (``task.loss``, ``task.critic_loss``, ``task.evaluate``). The
loop owns everything else: AdamW with warm-up and cosine decay, gradient accumulation and clipping,
mixed precision (bf16 autocast, or fp16 with loss scaling), EMA weights, DDP when launched with
``accelerate launch`` or ``torchrun`` (each rank drawing its own random numbers: ``rng.py``), tqdm
progress, metrics CSV (and TensorBoard when installed), atomic checkpoints with full training state,
exact ``resume``, and a clean stop on a non-finite loss (the model's or the critic's, on any rank:
every rank stops with the same error) that keeps the last good checkpoint.

Everything the step touches lives on ``accelerator.device``: the prepared model and critic, the EMA
copy, every batch (``send_to_device``) and whatever the task holds (``task.to``: loss networks,
held-out images). Batches are drawn by a generator seeded from (seed, step, micro-batch, rank), so a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import send_to_device
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from trilemma import checkpoint
from trilemma.files import atomic_write_bytes
from trilemma.nn.transformer import fused_optimizer_state
from trilemma.training.logs import RunLog
from trilemma.training.rng import mix, rank_seed, rng_kept, rng_state, seed_all, set_rng_state
from trilemma.training.schedule import warmup_cosine
from trilemma.training.stopping import TrainingError, stop_if_non_finite

MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class TrainConfig:
    steps: int = 2000  # optimizer steps in total
    batch_size: int = 32  # per process, per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int | None = None  # linear warm-up from 0; None = min(100, steps // 10)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    ema_decay: float = 0.999  # 0 disables EMA; decay is warmed up as min(decay, (1+t)/(10+t))
    # "bf16" (autocast), "fp16" (autocast + loss scaling) or "no"; quantizers and losses stay fp32.
    # None = what `accelerate launch --mixed_precision` / `accelerate config` chose ("no" otherwise).
    mixed_precision: str | None = None
    log_every: int = 10
    eval_every: int | None = None  # evaluate (and write a picture) every N steps and at the end; None = steps // 4
    save_every: int | None = None  # checkpoint every N steps and at the end; None = steps // 4
    seed: int = 0
    num_workers: int = 0  # DataLoader workers (0 = load in the training process)
    random_crop: float = 0.0  # > 0: train on random crops of a folder's images, at least this share of the shorter side

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            _at_least(name, getattr(self, name), 1)
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in [0, 1) (0 = off), got {self.ema_decay}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"`seed` must be in [0, 2^63), got {self.seed}")
        if self.num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {self.num_workers}")
        if self.mixed_precision not in (None, *MIXED_PRECISION):
            raise ValueError(f"`mixed_precision` must be one of {MIXED_PRECISION} or None, got {self.mixed_precision!r}")
        quarter = max(1, self.steps // 4)
        if self.warmup_steps is None:
            self.warmup_steps = min(100, max(1, self.steps // 10))
        self.eval_every = quarter if self.eval_every is None else self.eval_every
        self.save_every = quarter if self.save_every is None else self.save_every
        for name in ("warmup_steps", "eval_every", "save_every"):
            _at_least(name, getattr(self, name), 1)


def _at_least(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}")


class Task:
    """What the loop trains. Subclasses set ``model`` and ``dataset`` and define ``loss``."""

    model: nn.Module
    dataset: Dataset
    critic: nn.Module | None = None  # trained by ``critic_loss`` with its own optimizer
    distinct_items = False  # draw each batch without replacement (a contrastive loss's negatives)

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: every parameter decayed alike unless a task says otherwise."""
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]

    def collate(self, items: list[Any]) -> Any:
        return items

    def loss(self, model: nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def critic_loss(self, critic: nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor] | None:
        """The critic's own loss (key ``"disc"``, what its optimizer minimises) on one micro-batch of
        the step just taken, or None to skip it this step. Called after the model's optimizer step,
        once per micro-batch, in the order ``loss`` saw them."""
        return None

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        return {}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {}

    def to(self, device: torch.device) -> None:
        """Move what the task holds besides model and critic (loss networks, held-out data)."""


class ImageTask(Task):
    """A task trained on batches of images (``dataset`` items with an ``"image"``) and scored on
    held-out images ``eval_images`` (moved to the device with everything else)."""

    eval_images: torch.Tensor

    def collate(self, items: list[dict[str, Any]]) -> torch.Tensor:
        return torch.stack([item["image"] for item in items])

    def to(self, device: torch.device) -> None:
        self.eval_images = self.eval_images.to(device)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    return cfg.lr * warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)


class StepSampler(Sampler[list[int]]):
    """Yields the index batches of steps ``start..steps``, each drawn from (seed, step, micro, rank)."""

    def __init__(self, n: int, cfg: TrainConfig, start: int, rank: int, distinct: bool = False):
        self.n, self.cfg, self.start, self.rank, self.distinct = n, cfg, start, rank, distinct

    def __len__(self) -> int:
        return (self.cfg.steps - self.start) * self.cfg.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.cfg.steps):
            for micro in range(self.cfg.grad_accum):
                g = torch.Generator().manual_seed(mix(self.cfg.seed, step, micro, self.rank))
                if self.distinct:
                    yield torch.randperm(self.n, generator=g)[: self.cfg.batch_size].tolist()
                else:
                    yield torch.randint(self.n, (self.cfg.batch_size,), generator=g).tolist()


def init_distributed() -> None:
    """Join the process group now (when launched by torchrun / accelerate launch), before models are
    built: quantizers decide at construction whether to all-reduce their codebook statistics. The
    group is left at exit: a gloo group torn down with the interpreter can abort the process after
    training has finished."""
    state = PartialState(cpu=not torch.cuda.is_available())
    if torch.distributed.is_initialized() and not _leaving:
        _leaving.append(state)
        atexit.register(state.destroy_process_group)


_leaving: list[PartialState] = []  # the state whose group is left at exit, registered once


def check_run_dir(out: Path, resume: bool) -> bool:
    """Whether ``out`` holds a run; refuses a file, and a run that ``resume`` does not ask to continue."""
    if out.exists() and not out.is_dir():
        raise TrainingError(f"`out` {out}: is a file; a run is a directory")
    has_run = (out / "model" / checkpoint.CONFIG_FILE).exists()
    if has_run and not resume:
        raise TrainingError(f"{out} already holds a run; pass `resume=True` to continue it or choose a new `out`")
    return has_run


def _check_resumable(model: nn.Module, ckpt_dir: Path) -> dict[str, Any]:
    state = checkpoint.load_state(ckpt_dir) if (ckpt_dir / checkpoint.CONFIG_FILE).exists() else None
    if state is None:
        raise TrainingError(f"`resume=True`: no checkpoint with training state in {ckpt_dir}; start without `resume=True`")
    saved = checkpoint.read_config(ckpt_dir)["config"]
    now = checkpoint.config_to_dict(model.config)
    defaults = checkpoint.config_defaults(model.config)  # a field the checkpoint predates reads as its default
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k, defaults.get(k)) != now.get(k))
    if changed:
        raise TrainingError(f"`resume=True`: the model config differs from the checkpoint's in {changed}; resume with the same settings")
    return state


def train(task: Task, cfg: TrainConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) training; returns {"step", "metrics", "eval", "checkpoint", "replicas"}."""
    out = Path(out_dir)
    ckpt_dir = out / "model"
    state = None
    check_run_dir(out, resume)
    if resume:
        state = _check_resumable(task.model, ckpt_dir)
        if int(state["step"]) >= cfg.steps:  # nothing to do, and nothing is touched
            print(f"{ckpt_dir} is already at step {state['step']} >= steps={cfg.steps}; nothing to do")
            return {"step": int(state["step"]), "metrics": {}, "eval": {}, "checkpoint": ckpt_dir, "replicas": []}

    acc = _accelerator(cfg.mixed_precision)
    main, device, rank = acc.is_main_process, acc.device, acc.process_index
    model, critic = task.model, task.critic
    if state is not None:
        model.load_state_dict(state["model"])
        if critic is not None:
            critic.load_state_dict(state["critic"])
    opt = torch.optim.AdamW(task.param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    if critic is not None:
        copt = torch.optim.AdamW(critic.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        model, critic, opt, copt = acc.prepare(model, critic, opt, copt)
    else:
        model, opt = acc.prepare(model, opt)
    raw = acc.unwrap_model(model)
    task.to(device)
    ema = copy.deepcopy(raw).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
    # The models are built (from one seed: the same on every rank); from here each rank draws its own stream.
    seed_all(rank_seed(cfg.seed, rank))
    start = int(state["step"]) if state else 0
    loader = DataLoader(
        task.dataset, batch_sampler=StepSampler(len(task.dataset), cfg, start, rank, task.distinct_items),
        collate_fn=task.collate, num_workers=cfg.num_workers,
    )
    batches = iter(loader)  # draws a seed from the global RNG: before that RNG is restored
    if state is not None:
        opt.load_state_dict(fused_optimizer_state(state["optimizer"], state["model"], raw, opt))  # after prepare: tensors on the parameters' device
        if critic is not None:
            copt.load_state_dict(state["critic_optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if acc.scaler is not None and state.get("scaler") is not None:  # fp16 loss scale
            acc.scaler.load_state_dict(state["scaler"])
        if rank < len(state["rng"]):  # one per rank saved
            set_rng_state(state["rng"][rank])
        else:  # a rank the run did not have starts a stream of its own
            seed_all(mix(cfg.seed, "resume", start, rank))

    out.mkdir(parents=True, exist_ok=True)
    if main:
        atomic_write_bytes(out / "train_config.json", (json.dumps(asdict(cfg), indent=2) + "\n").encode())
    logger = RunLog(out, start if resume else -1, main)
    last: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}

    def save(step: int) -> None:
        acc.wait_for_everyone()
        rng = [rng_state()]
        if acc.num_processes > 1:
            gathered = [None] * acc.num_processes
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        if main:
            state = {
                "step": step, "model": raw.state_dict(), "optimizer": opt.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "rng": rng, "train_config": asdict(cfg),
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            }
            if critic is not None:
                state["critic"] = acc.unwrap_model(critic).state_dict()
                state["critic_optimizer"] = copt.state_dict()
            extra = {"step": step, **task.checkpoint_extra()}
            weights = ema.state_dict() if ema is not None else None
            checkpoint.save(raw, ckpt_dir, state=state, weights=weights, extra=extra)
        acc.wait_for_everyone()

    bar = tqdm(total=cfg.steps, initial=start, disable=not main, desc=f"train {out.name}", dynamic_ncols=True)
    for step in range(start, cfg.steps):
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        sums: dict[str, float] = {}
        micro_batches = []
        for micro in range(cfg.grad_accum):
            batch = send_to_device(next(batches), device)
            with _no_sync(acc, model, micro, cfg), acc.autocast():
                losses = task.loss(model, batch, step)
            acc.backward(losses["loss"] / cfg.grad_accum)  # a NaN here is caught below, before any step
            _accumulate(sums, losses, cfg.grad_accum)
            micro_batches.append(batch)
        stop_if_non_finite(acc, step, sums, "loss", ckpt_dir)
        grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        # With fp16 loss scaling an overflow is expected now and then: the scaler skips that step.
        # The norm is of gradients already averaged across ranks: every rank decides alike.
        if not math.isfinite(float(grad_norm)) and acc.mixed_precision != "fp16":
            stop_if_non_finite(acc, step, {"grad_norm": float(grad_norm)}, "grad_norm", ckpt_dir)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if critic is not None:
            sums.update(_critic_step(acc, task, critic, copt, micro_batches, step, lr, cfg, ckpt_dir))
        if ema is not None:
            _update_ema(ema, raw, cfg.ema_decay, step)
        done = step + 1
        last = {"lr": lr, "grad_norm": float(grad_norm), **sums}
        if main and (done % cfg.log_every == 0 or done == cfg.steps):
            logger.log("metrics", done, last)
            bar.set_postfix({k: f"{v:.4g}" for k, v in sums.items() if k == "loss" or len(sums) <= 4})
        bar.update(1)
        if done % cfg.save_every == 0 or done == cfg.steps:
            save(done)
        if main and (done % cfg.eval_every == 0 or done == cfg.steps):
            with rng_kept():  # sampling draws; training goes on as a run resumed from the save above does
                eval_metrics = task.evaluate(ema if ema is not None else raw, done, out)
            logger.log("eval", done, eval_metrics)
            bar.write(f"step {done}: " + ", ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))
    bar.close()
    replicas = _replica_checksums(acc, ema if ema is not None else raw)
    if main and acc.num_processes > 1:
        atomic_write_bytes(out / "replicas.json", (json.dumps(replicas) + "\n").encode())
    acc.wait_for_everyone()
    return {"step": max(start, cfg.steps), "metrics": last, "eval": eval_metrics, "checkpoint": ckpt_dir, "replicas": replicas}


def _critic_step(acc: Any, task: Task, critic: nn.Module, copt: Any, micro_batches: list[Any], step: int, lr: float,
                 cfg: TrainConfig, ckpt_dir: Path) -> dict[str, float]:
    """One optimizer step of the critic on its own loss alone, averaged over the step's micro-batches
    as the model's is (synced across processes by DDP on the last one).

    Its gradients are cleared first: whatever reached them before (nothing should: the task's
    generator-side term runs the critic with frozen parameters) is not the critic's loss. It runs
    after the model's optimizer step, so that an fp16 loss scale moved by that step scales the
    critic's gradients and unscales them alike."""
    sums: dict[str, float] = {}
    for micro, batch in enumerate(micro_batches):
        with _no_sync(acc, critic, micro, cfg):
            losses = task.critic_loss(critic, batch, step)
        if losses is None:
            continue
        if not sums:
            copt.zero_grad(set_to_none=True)
        acc.backward(losses["disc"] / cfg.grad_accum)
        _accumulate(sums, losses, cfg.grad_accum)
    if not sums:
        return {}
    stop_if_non_finite(acc, step, sums, "disc", ckpt_dir)
    for group in copt.param_groups:
        group["lr"] = lr
    copt.step()
    copt.zero_grad(set_to_none=True)
    return sums


def _no_sync(acc: Any, model: nn.Module, micro: int, cfg: TrainConfig) -> Any:
    """DDP all-reduces gradients on the last micro-batch of a step only."""
    return acc.no_sync(model) if micro < cfg.grad_accum - 1 else contextlib.nullcontext()


def _accumulate(sums: dict[str, float], losses: dict[str, torch.Tensor], grad_accum: int) -> None:
    for k, v in losses.items():
        sums[k] = sums.get(k, 0.0) + float(v.detach()) / grad_accum


def _accelerator(mixed_precision: str | None) -> Any:
    """A new ``Accelerator`` for one training run. accelerate keeps one ``AcceleratorState`` per
    process and refuses a second run with another mixed precision (a notebook, or the demo's
    workers, training one model in fp32 after another under bf16), so the previous run's state is
    cleared first; the distributed state (``PartialState``: the process group) is kept. Without a
    GPU, accelerate only goes multi-process (gloo) when told it is on the CPU."""
    AcceleratorState._reset_state(reset_partial_state=False)  # what accelerate's own tests call between runs
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - d)
    for e, b in zip(ema.buffers(), model.buffers()):  # codebooks updated by EMA live in buffers
        e.copy_(b)


@torch.no_grad()
def _replica_checksums(acc: Any, model: nn.Module) -> list[str]:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().contiguous().float().numpy().tobytes())
    mine = h.hexdigest()
    if acc.num_processes == 1:
        return [mine]
    gathered: list[Any] = [None] * acc.num_processes
    torch.distributed.all_gather_object(gathered, mine)
    return gathered
