"""The shared training loop: learning, exact resume, surviving SIGKILL, stopping on NaN, DDP."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from trilemma import checkpoint
from trilemma.training import tokenizer as tokenizer_training
from trilemma.training.loop import TrainConfig, TrainingError, lr_at
from trilemma.training.tokenizer import train_tokenizer

TINY = {"channels": 8, "quantizer": {"codebook_size": 32, "codebook_dim": 4}}


def _cfg(steps, **kw):
    base = dict(steps=steps, batch_size=8, lr=2e-3, warmup_steps=2, eval_every=steps, save_every=steps, log_every=1)
    return TrainConfig(**{**base, **kw})


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_tokenizer_training_improves_reconstruction(tmp_path):
    first = train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "a", _cfg(1), overrides=TINY, eval_images=32)
    more = train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "b", _cfg(40), overrides=TINY, eval_images=32)
    assert more["eval"]["psnr"] > first["eval"]["psnr"] + 1.0
    rows = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,lr,grad_norm,loss") and len(rows) == 41
    assert (tmp_path / "b" / "samples" / "recon_000040.png").is_file()
    loaded = checkpoint.load(more["checkpoint"], kind="tokenizer")
    assert json.loads((more["checkpoint"] / "config.json").read_text())["step"] == 40
    assert loaded.spec.vocab_size == 32


def _poison_at(monkeypatch, bad_step):
    """Make the tokenizer loss NaN at one step (an interruption the loop must survive)."""
    real_loss = tokenizer_training.TokenizerTask.loss

    def poisoned(self, model, images, step):
        out = real_loss(self, model, images, step)
        if step == bad_step:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(tokenizer_training.TokenizerTask, "loss", poisoned)
    return lambda: monkeypatch.setattr(tokenizer_training.TokenizerTask, "loss", real_loss)


def test_resume_continues_exactly(tmp_path, monkeypatch):
    cfg = _cfg(6, ema_decay=0.9, save_every=3)
    straight = train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "s", cfg, overrides=TINY, eval_images=8)
    heal = _poison_at(monkeypatch, 3)
    with pytest.raises(TrainingError):
        train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "r", cfg, overrides=TINY, eval_images=8)
    heal()
    assert checkpoint.load_state(tmp_path / "r" / "model")["step"] == 3
    resumed = train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "r", cfg, overrides=TINY, eval_images=8, resume=True)
    assert resumed["step"] == 6
    a = checkpoint.load_state(straight["checkpoint"])
    b = checkpoint.load_state(resumed["checkpoint"])
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    with pytest.raises(TrainingError, match="already holds a run"):
        train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "r", cfg, overrides=TINY, eval_images=8)
    with pytest.raises(TrainingError, match="config differs"):
        train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "r", _cfg(8), overrides={**TINY, "channels": 16},
                        eval_images=8, resume=True)
    # a checkpoint written before a config field existed reads as that field's default
    config_file = tmp_path / "r" / "model" / checkpoint.CONFIG_FILE
    meta = json.loads(config_file.read_text())
    del meta["config"]["dropout"]  # a field with a default (0.0)
    config_file.write_text(json.dumps(meta))
    assert train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "r", cfg, overrides=TINY, eval_images=8,
                           resume=True)["step"] == 6  # nothing to do, not refused
    with pytest.raises(TrainingError, match=r"config differs from the checkpoint's in \['dropout'\]"):
        train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "r", cfg, overrides={**TINY, "dropout": 0.1},
                        eval_images=8, resume=True)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    _poison_at(monkeypatch, 3)
    with pytest.raises(TrainingError) as err:
        train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "n", _cfg(6, save_every=2), overrides=TINY, eval_images=8)
    assert "non-finite loss at step 4" in str(err.value) and "last good checkpoint" in str(err.value)
    assert checkpoint.load_state(tmp_path / "n" / "model")["step"] == 2
    checkpoint.load(tmp_path / "n" / "model")


def _cli(*args):
    return [sys.executable, "-m", "trilemma", *args]


def test_sigkill_then_resume_ends_at_the_same_step(tmp_path):
    out = tmp_path / "k"
    args = ["train", "tokenizer", "--preset", "vq-f4-shapes", "--steps", "400", "--batch-size", "8", "--save-every", "3",
            "--eval-every", "1000", "--out", str(out), "--set", "channels=8", "--set", "quantizer.codebook_size=32"]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "model" / "training_state.pt").exists():
        time.sleep(0.2)
    time.sleep(1.0)  # let it get into the next checkpoint write, if it can
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint.load_state(out / "model")["step"]
    assert 3 <= killed_at < 400
    args[args.index("400")] = str(killed_at + 6)
    done = subprocess.run(_cli(*args, "--resume"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert checkpoint.load_state(out / "model")["step"] == killed_at + 6
    checkpoint.load(out / "model", kind="tokenizer")
    assert not [p for p in out.iterdir() if p.name.startswith(".model.")]  # no stray temp dirs survive


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "trilemma", "train", "tokenizer", "--preset", "vq-f4-shapes", "--steps", "6", "--batch-size", "4",
           "--out", str(out), "--set", "channels=8", "--set", "quantizer.codebook_size=32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    replicas = json.loads((out / "replicas.json").read_text())
    assert len(replicas) == 2 and replicas[0] == replicas[1]


def test_gan_switches_on_at_its_start_step_and_logs_each_term(tmp_path):
    from trilemma.tokenizers.losses import LossConfig

    loss = LossConfig(gan_weight=0.5, gan_start=2, disc_channels=8, disc_layers=2)
    train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "g", _cfg(4), loss=loss, overrides=TINY, eval_images=8)
    import csv

    rows = list(csv.DictReader((tmp_path / "g" / "metrics.csv").open()))
    assert [r["gan"] for r in rows[:2]] == ["", ""] and all(r["gan"] and r["disc"] for r in rows[2:])
    state = checkpoint.load_state(tmp_path / "g" / "model")
    assert "critic" in state and state["critic_optimizer"]["state"]  # the discriminator trained and resumes


def test_perceptual_loss_without_weights_names_the_file(tmp_path, monkeypatch):
    from trilemma.tokenizers.losses import LossConfig, TokenizerLoss

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError) as err:
        TokenizerLoss(LossConfig(perceptual_weight=1.0))
    assert "vgg16-397923af.pth" in str(err.value) and str(tmp_path / "torch") in str(err.value)


def _critic_gradients(tmp_path, monkeypatch, cfg):
    """Train with a GAN from step 0 and record, for the critic: its gradients when first asked for its
    loss, the gradients of its loss on each micro-batch alone (on a copy), and the gradients its
    optimizer steps on."""
    import copy

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from trilemma.tokenizers.losses import LossConfig

    seen = {"expected": []}
    real_critic_loss = tokenizer_training.TokenizerTask.critic_loss

    def spy(self, critic, images, step):
        seen.setdefault("grads_before", [p.grad for p in critic.parameters()])
        ref = copy.deepcopy(getattr(critic, "module", critic))
        ref.zero_grad(set_to_none=True)
        real, recon = self._for_critic[0]  # what critic_loss is about to take
        self.loss_fn.discriminator_terms(real, recon, ref)["disc"].backward()
        seen["expected"].append([p.grad.clone() for p in ref.parameters()])
        seen["critic"] = critic
        return real_critic_loss(self, critic, images, step)

    def hook(optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if "critic" in seen and params[0] is next(seen["critic"].parameters()):
            seen["actual"] = [p.grad.clone() for p in params]

    monkeypatch.setattr(tokenizer_training.TokenizerTask, "critic_loss", spy)
    handle = register_optimizer_step_pre_hook(hook)
    try:
        loss = LossConfig(gan_weight=0.5, gan_start=0, disc_channels=8, disc_layers=2, adaptive_gan_weight=False)
        train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "g", cfg, loss=loss, overrides=TINY, eval_images=8)
    finally:
        handle.remove()
    return seen


def test_discriminator_step_sees_only_its_own_loss(tmp_path, monkeypatch):
    """The generator's adversarial term leaves the discriminator's gradients untouched, and the
    discriminator steps on exactly the gradients of its own loss."""
    seen = _critic_gradients(tmp_path, monkeypatch, _cfg(1))
    assert all(g is None for g in seen["grads_before"])  # the generator step reached no discriminator weight
    [expected] = seen["expected"]
    assert len(seen["actual"]) == len(expected) > 0
    for actual, wanted in zip(seen["actual"], expected):
        assert torch.allclose(actual, wanted, atol=1e-6)


def test_with_gradient_accumulation_the_critic_learns_from_every_micro_batch(tmp_path, monkeypatch):
    """grad_accum=2: the critic's gradient is that of the mean of its loss over both micro-batches."""
    seen = _critic_gradients(tmp_path, monkeypatch, _cfg(1, grad_accum=2))
    first, second = seen["expected"]
    assert len(seen["actual"]) == len(first) > 0
    assert any(not torch.allclose(a, b) for a, b in zip(first, second))  # the micro-batches differ
    for actual, a, b in zip(seen["actual"], first, second):
        assert torch.allclose(actual, (a + b) / 2, atol=1e-6)


def test_a_training_step_keeps_every_tensor_on_the_accelerator_device(tmp_path, monkeypatch):
    from accelerate import PartialState

    from trilemma.tokenizers.losses import LossConfig

    device = PartialState().device
    seen = []
    task_cls = tokenizer_training.TokenizerTask
    real_loss, real_eval = task_cls.loss, task_cls.evaluate

    def loss(self, model, images, step):
        seen.append(images.device)
        seen.extend(p.device for p in model.parameters())
        seen.extend(t.device for t in self.loss_fn.state_dict().values())
        seen.append(self.eval_images.device)
        return real_loss(self, model, images, step)

    def evaluate(self, model, step, out_dir):
        seen.extend(p.device for p in model.parameters())  # the EMA copy
        return real_eval(self, model, step, out_dir)

    monkeypatch.setattr(task_cls, "loss", loss)
    monkeypatch.setattr(task_cls, "evaluate", evaluate)
    gan = LossConfig(gan_weight=0.5, gan_start=0, disc_channels=8, disc_layers=2)
    train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "d", _cfg(2, ema_decay=0.9), loss=gan, overrides=TINY, eval_images=8)
    assert len(seen) > 10 and all(d.type == device.type for d in seen), set(seen)


def test_mixed_precision_follows_accelerate_unless_a_flag_says_otherwise(monkeypatch):
    from trilemma.cli import main as cli_main  # noqa: F401  (the flags below are the CLI's)
    from trilemma.cli.main import build_parser
    from trilemma.cli.options import training

    parse = lambda *extra: training(build_parser().parse_args(  # noqa: E731
        ["train", "tokenizer", "--preset", "vq-f4-shapes", "--out", "x", *extra]))
    assert parse().mixed_precision is None  # accelerate launch / accelerate config decide
    assert parse("--bf16").mixed_precision == "bf16" and parse("--fp16").mixed_precision == "fp16"
    with pytest.raises(SystemExit):
        parse("--bf16", "--fp16")


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    train_tokenizer("vq-f4-shapes", "shapes", root / "run", _cfg(2), overrides=TINY, eval_images=8)
    return root


@pytest.mark.parametrize("kind", ["dalle", "parti", "muse"])
def test_generator_training_resumes_exactly(kind, tokenizer_run, tmp_path, monkeypatch):
    """Interrupted (a NaN at step 4) then resumed == uninterrupted, caption dropout and masks included,
    with an evaluation (which samples: random draws) on the step that saved."""
    from trilemma.training import generator as generator_training

    cfg = _cfg(6, ema_decay=0.9, save_every=3, eval_every=3, batch_size=16)
    kw = dict(preset=f"{kind}-tiny", num_images=64, cache_dir=tokenizer_run / "cache")
    train = lambda out, **more: generator_training.train_generator(  # noqa: E731
        kind, tokenizer_run / "run", "shapes", tmp_path / out, cfg, **kw, **more)
    straight = train("s")
    real_loss = generator_training.GeneratorTask.loss

    def poisoned(self, model, batch, step):
        out = real_loss(self, model, batch, step)
        return {**out, "loss": out["loss"] * float("nan")} if step == 3 else out

    monkeypatch.setattr(generator_training.GeneratorTask, "loss", poisoned)
    with pytest.raises(TrainingError):
        train("r")
    monkeypatch.setattr(generator_training.GeneratorTask, "loss", real_loss)
    resumed = train("r", resume=True)
    a, b = checkpoint.load_state(straight["checkpoint"]), checkpoint.load_state(resumed["checkpoint"])
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_outputs_follow_the_umask(tmp_path, tokenizer_run):
    """Atomic writes end with the mode a plain write would have had (0755 dirs / 0644 files under 022)."""
    import stat

    old = os.umask(0o022)
    try:
        from trilemma.files import atomic_write_bytes

        report = atomic_write_bytes(tmp_path / "report.md", b"# hi\n")
        model = checkpoint.load(tokenizer_run / "run" / "model")
        saved = checkpoint.save(model, tmp_path / "ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(report.stat().st_mode) == 0o644
    assert stat.S_IMODE(saved.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in saved.iterdir())


def test_runs_of_another_precision_follow_in_one_process(tmp_path):
    # accelerate keeps one state per process; the demo's workers train under bf16, then in fp32.
    for i, precision in enumerate(["bf16", "no", "bf16"]):
        result = train_tokenizer("vq-f4-shapes", "shapes", tmp_path / f"run{i}", _cfg(1, mixed_precision=precision),
                                 overrides=TINY, eval_images=8)
        assert result["step"] == 1


def test_fp16_loss_scale_resumes_exactly(tmp_path, monkeypatch):
    """The fp16 GradScaler's state (scale, growth tracker) is saved and restored. accelerate makes no
    scaler on the CPU (its fp16 is GPU-only), so a CPU GradScaler is put where accelerate keeps it
    (``Accelerator.scaler``, which the prepared optimizer steps through): the test checks that the
    loop saves and restores whatever scaler accelerate uses, not fp16 arithmetic."""
    from trilemma.training import loop

    real_accelerator, scalers = loop._accelerator, []

    def with_scaler(mixed_precision):
        acc = real_accelerator(mixed_precision)
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)  # grows every step
        scalers.append(acc.scaler)
        return acc

    monkeypatch.setattr(loop, "_accelerator", with_scaler)
    cfg = _cfg(4, save_every=2)
    straight = train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "s", cfg, overrides=TINY, eval_images=8)
    heal = _poison_at(monkeypatch, 2)
    with pytest.raises(TrainingError):
        train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "r", cfg, overrides=TINY, eval_images=8)
    heal()
    resumed = train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "r", cfg, overrides=TINY, eval_images=8, resume=True)
    assert scalers[0].get_scale() == 2.0**12  # it grew on each of the 4 steps
    assert scalers[-1].state_dict() == scalers[0].state_dict()
    assert checkpoint.load_state(resumed["checkpoint"])["scaler"] == scalers[0].state_dict()
    a, b = checkpoint.load_state(straight["checkpoint"]), checkpoint.load_state(resumed["checkpoint"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_non_finite_critic_loss_stops_training_naming_the_critic(tmp_path, monkeypatch):
    from trilemma.tokenizers.losses import LossConfig

    real_critic_loss = tokenizer_training.TokenizerTask.critic_loss

    def poisoned(self, critic, images, step):
        out = real_critic_loss(self, critic, images, step)
        return {**out, "disc": out["disc"] * float("nan")} if step == 2 else out

    monkeypatch.setattr(tokenizer_training.TokenizerTask, "critic_loss", poisoned)
    loss = LossConfig(gan_weight=0.5, gan_start=0, disc_channels=8, disc_layers=2)
    with pytest.raises(TrainingError) as err:
        train_tokenizer("vq-f4-shapes", "shapes", tmp_path / "c", _cfg(4, save_every=1), loss=loss, overrides=TINY,
                        eval_images=8)
    assert "non-finite critic loss at step 3 (disc=nan)" in str(err.value) and "last good checkpoint" in str(err.value)
    state = checkpoint.load_state(tmp_path / "c" / "model")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["critic"].values())


def test_the_decoder_trains_on_the_ids_inference_makes_under_bf16(tokenizer_run, tmp_path, monkeypatch):
    """Under bf16 autocast the decoder task still encodes in fp32: the ids it trains on are the ids
    ``tokenizer.encode`` gives at inference."""
    from trilemma.decoders.token_diffusion import TokenDiffusionDecoder
    from trilemma.training.decoder import train_decoder

    seen = []
    real_forward = TokenDiffusionDecoder.forward

    def spy(self, images, ids):
        seen.append((images.detach().clone(), ids.clone()))
        return real_forward(self, images, ids)

    monkeypatch.setattr(TokenDiffusionDecoder, "forward", spy)
    train_decoder(tokenizer_run / "run", "shapes", tmp_path / "d", _cfg(2, batch_size=32, mixed_precision="bf16"),
                  preset="token-diffusion-tiny", eval_images=4)
    tok = checkpoint.load(tokenizer_run / "run" / "model", kind="tokenizer")
    assert len(seen) == 2
    for images, ids in seen:
        assert images.dtype == torch.float32
        assert torch.equal(ids, tok.encode(images).ids)

