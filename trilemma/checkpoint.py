"""Checkpoint directories: ``config.json`` + ``model.safetensors`` (+ training state), written atomically.

A checkpoint is a directory (as diffusers' ``save_pretrained``): the JSON records which registered
model to build and its config, so loading rebuilds the model from the registry and then fills its
weights. Writes go to a temporary sibling directory that is renamed into place, so a killed process
never leaves a half-written checkpoint. Loading never downloads anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trilemma import registry

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the path and the problem."""


def config_to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (possibly nested) config dataclass from JSON; lists become tuples where typed so."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise CheckpointError(f"config has unknown fields {sorted(unknown)} for {cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        hint = hints.get(name)
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        target = args[0] if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1 else hint
        if dataclasses.is_dataclass(target) and isinstance(value, dict):
            value = config_from_dict(target, value)
        elif isinstance(value, list) and (typing.get_origin(target) is tuple or target is tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def recover(directory: str | Path) -> None:
    """Clean up after a writer that was killed mid-save (SIGKILL runs no cleanup code).

    A kill during ``write`` leaves a partial ``.NAME.tmp-*`` beside NAME: removed. A kill between
    the two renames of a swap leaves the previous checkpoint at ``.NAME.old-*`` and no NAME: it is
    put back. Called before every save and when training state is read for a resume; one writer
    per checkpoint directory is assumed.
    """
    directory = Path(directory).resolve()
    if not directory.parent.is_dir():
        return
    olds = sorted(directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not directory.exists():
        try:
            os.rename(olds[-1], directory)
            olds.pop()
        except OSError:  # e.g. a read-only copy: leave it for a writer to recover
            return
    for stale in [*olds, *directory.parent.glob(f".{directory.name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def _write_dir_atomically(directory: Path, write: typing.Callable[[Path], None]) -> None:
    directory = directory.resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if directory.exists():
            # Swap: old aside, new in, old removed. A crash between the two renames leaves the
            # previous checkpoint intact at `.NAME.old-*`, never a partial one at NAME.
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.rmdir(old)
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save(
    model: torch.nn.Module,
    directory: str | Path,
    *,
    state: dict[str, Any] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` (a registered class with ``.config``) to ``directory`` atomically.

    weights: tensors to store instead of ``model.state_dict()`` (e.g. the EMA weights)
    state:   training state (optimizer, scheduler, step, RNG...) stored beside, for exact resume
    extra:   JSON-able metadata merged into config.json (e.g. the tokenizer a generator was trained on)
    """
    directory = Path(directory)
    context = model.checkpoint_context() if hasattr(model, "checkpoint_context") else {}
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": model.registry_kind,
        "name": model.registry_name,
        "config": config_to_dict(model.config),
        "context": context,
        **(extra or {}),
    }
    tensors = weights if weights is not None else model.state_dict()
    # safetensors refuses shared storage; clone makes every tensor its own contiguous buffer.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if state is not None:
            torch.save(state, tmp / STATE_FILE)

    _write_dir_atomically(directory, write)
    return directory


def read_config(directory: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint, validated; errors name the path and problem."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: a checkpoint is a directory with {CONFIG_FILE} and {WEIGHTS_FILE}, got a file")
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing; {directory} is not a trilemma checkpoint")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{cfg_path}: corrupt JSON ({err})") from None
    if not isinstance(meta, dict) or not {"kind", "name", "config"} <= set(meta):
        raise CheckpointError(f"{cfg_path}: not a trilemma checkpoint config (needs kind, name, config)")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_path}: format_version {version} is newer than this trilemma understands "
            f"({FORMAT_VERSION}); upgrade trilemma"
        )
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(f"{directory}: is a {meta['kind']} checkpoint, expected a {kind}")
    return meta


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (with ``model/``) or a checkpoint directory -> the checkpoint directory."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / "model" / CONFIG_FILE).is_file():
        return path / "model"
    raise CheckpointError(f"{path}: no checkpoint here (expected {path}/{CONFIG_FILE} or {path}/model/{CONFIG_FILE})")


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({err})") from None


def load(directory: str | Path, kind: str | None = None, **context: Any) -> torch.nn.Module:
    """Rebuild the model recorded in ``directory`` from the registry and load its weights (eval mode)."""
    directory = Path(directory)
    meta = read_config(directory, kind)
    try:
        cls = registry.model_class(meta["kind"], meta["name"])
    except registry.RegistryError as err:
        raise CheckpointError(f"{directory}: {err}") from None
    config = config_from_dict(cls.Config, meta["config"])
    if hasattr(cls, "context_from_checkpoint"):
        context = {**cls.context_from_checkpoint(meta.get("context", {}), directory), **context}
    model = cls(config, **context)
    weights = load_weights(directory)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE}: weights do not match the model in {CONFIG_FILE} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{directory / WEIGHTS_FILE}: tensor {name!r} has shape {list(tensor.shape)}, "
                f"the model in {CONFIG_FILE} expects {list(expected[name].shape)}"
            )
    model.load_state_dict(weights)
    model.checkpoint_dir = directory
    return model.eval()


def load_state(directory: str | Path) -> dict[str, Any] | None:
    recover(directory)
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch.load raises several types on corrupt pickles
        raise CheckpointError(f"{path}: corrupt training state ({err})") from None


def content_hash(directory: str | Path) -> str:
    """sha256 of the weights file: identifies a tokenizer a generator was trained on."""
    path = Path(directory) / WEIGHTS_FILE
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
