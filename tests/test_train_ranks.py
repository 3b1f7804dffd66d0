"""The training loop under DDP (2 gloo processes on the CPU): ranks draw different random numbers but
end with identical weights, a NaN on one rank stops every rank with one error, and a tokenizer with
nothing to learn is saved once (by the main process only); and any seed `TrainConfig` takes trains.

Run as a script (``python -m torch.distributed.run ... tests/test_train_ranks.py MODE OUT``) this
file is the worker each process runs."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from trilemma import checkpoint
from trilemma.training import tokenizer as tokenizer_training
from trilemma.training.loop import Task, TrainConfig, TrainingError, init_distributed, train

NAN_STEP = 2  # the step (0-based) at which rank 1's loss turns NaN in mode "nan"


@dataclass
class TinyConfig:
    features: int = 4


class Tiny(nn.Module):
    """A linear map with what ``checkpoint.save`` needs (registry names and a config)."""

    registry_kind, registry_name = "test", "tiny"

    def __init__(self):
        super().__init__()
        self.config = TinyConfig()
        self.linear = nn.Linear(self.config.features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class DrawingTask(Task):
    """Least squares on fixed points; every loss records a draw from the global RNG (as diffusion
    timesteps, Muse masks and caption dropout draw), and evaluation draws too (as sampling does)."""

    def __init__(self, nan_rank: int | None = None, rank: int = 0):
        torch.manual_seed(0)
        self.model = Tiny()
        g = torch.Generator().manual_seed(1)
        self.dataset = list(torch.randn(32, 4, generator=g))
        self.draws: list[float] = []
        self.nan_rank, self.rank = nan_rank, rank

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)

    def loss(self, model: nn.Module, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        self.draws.append(float(torch.rand(1)))
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        if step == NAN_STEP and self.rank == self.nan_rank:
            loss = loss * float("nan")
        return {"loss": loss}

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        return {"draw": float(torch.rand(8).sum())}


def _worker(mode: str, out: Path) -> None:
    from accelerate import PartialState

    init_distributed()
    rank = PartialState().process_index
    if mode == "patch":
        tokenizer_training.train_tokenizer("patch4-float", "shapes", out, TrainConfig(steps=1))
        return
    task = DrawingTask(nan_rank=1 if mode == "nan" else None, rank=rank)
    cfg = TrainConfig(steps=4, batch_size=4, lr=1e-2, warmup_steps=1, save_every=2, eval_every=2, ema_decay=0.0)
    try:
        train(task, cfg, out)
    except TrainingError as err:
        (out / f"error-{rank}.txt").write_text(str(err))
        raise
    finally:
        (out / f"draws-{rank}.json").write_text(json.dumps(task.draws))


def _two_processes(mode: str, out: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), mode, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)  # a hang fails here


@pytest.mark.slow
def test_ranks_draw_different_random_numbers_and_end_with_identical_weights(tmp_path):
    done = _two_processes("draws", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    draws = [json.loads((tmp_path / f"draws-{r}.json").read_text()) for r in (0, 1)]
    assert len(draws[0]) == len(draws[1]) == 4
    assert all(a != b for a, b in zip(*draws)), draws  # two processes, two streams: not one draw twice
    replicas = json.loads((tmp_path / "replicas.json").read_text())
    assert len(replicas) == 2 and replicas[0] == replicas[1]


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_with_the_same_error(tmp_path):
    done = _two_processes("nan", tmp_path, timeout=240)
    assert done.returncode != 0
    errors = [(tmp_path / f"error-{r}.txt") for r in (0, 1)]
    assert all(e.is_file() for e in errors), done.stderr[-3000:]
    message = errors[0].read_text()
    assert message == errors[1].read_text()
    assert f"non-finite loss at step {NAN_STEP + 1}" in message and "rank 1" in message and "last good checkpoint" in message
    assert checkpoint.load_state(tmp_path / "model")["step"] == NAN_STEP  # the last good one, saved at step 2


@pytest.mark.slow
def test_a_tokenizer_with_nothing_to_learn_is_saved_once_under_ddp(tmp_path):
    done = _two_processes("patch", tmp_path / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("has nothing to learn") == 1
    checkpoint.load(tmp_path / "run" / "model", kind="tokenizer")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model"]  # no stray temp dirs


def test_only_the_main_process_saves_a_tokenizer_with_nothing_to_learn(tmp_path, monkeypatch):
    from accelerate import PartialState

    saved = []
    monkeypatch.setattr(checkpoint, "save", lambda *a, **kw: saved.append(a))
    monkeypatch.setattr(PartialState, "is_main_process", property(lambda self: False))
    result = tokenizer_training.train_tokenizer("patch4-float", "shapes", tmp_path / "p", TrainConfig(steps=1))
    assert saved == [] and result["checkpoint"] == tmp_path / "p" / "model"
    monkeypatch.setattr(PartialState, "is_main_process", property(lambda self: True))
    tokenizer_training.train_tokenizer("patch4-float", "shapes", tmp_path / "p", TrainConfig(steps=1))
    assert len(saved) == 1


def test_a_seed_past_32_bits_trains(tmp_path):
    # numpy takes 32-bit seeds, TrainConfig up to 2^63 (accelerate's set_seed raised here)
    cfg = TrainConfig(steps=1, batch_size=4, seed=2**40)
    result = tokenizer_training.train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "s", cfg, overrides={"channels": 8},
                                                eval_images=4)
    assert result["step"] == 1


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
