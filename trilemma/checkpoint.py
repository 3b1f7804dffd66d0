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
from trilemma.files import umask_mode

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the path and the problem."""


def config_to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_defaults(config: Any) -> dict[str, Any]:
    """A model config class's defaults as ``config_to_dict`` writes them ({} when a field has none:
    then every field is in each saved config)."""
    try:
        return config_to_dict(type(config)())
    except TypeError:
        return {}


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
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes it 0700; a plain mkdir follows the umask
        write(tmp)
        for f in tmp.iterdir():
            os.chmod(f, umask_mode(0o666))  # safetensors writes 0600 whatever the umask
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
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{cfg_path}: format_version must be an integer, got {version!r}")
    if not isinstance(meta["config"], dict) or not isinstance(meta.get("context", {}), dict):
        raise CheckpointError(f"{cfg_path}: 'config' and 'context' must be JSON objects")
    if version > FORMAT_VERSION:
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


def tokenizer_record(tokenizer_dir: str | Path) -> dict[str, str]:
    """What a generator or decoder records of the tokenizer it is trained on (``recorded_tokenizer`` reads it)."""
    return {"path": str(Path(tokenizer_dir).resolve()), "hash": content_hash(tokenizer_dir)}


def recorded_tokenizer(model_dir: str | Path, tokenizer_dir: str | Path | None = None, kind: str | None = None) -> Path:
    """The tokenizer checkpoint a generator or decoder (``kind``) in ``model_dir`` was trained on:
    the one it recorded, or ``tokenizer_dir`` when given, which must have the recorded weights (hash)."""
    model_dir = Path(model_dir)
    recorded = read_config(model_dir, kind).get("tokenizer") or {}
    if tokenizer_dir is None:
        if not recorded.get("path"):
            raise CheckpointError(f"{model_dir}: records no tokenizer; pass the one it was trained on as `tokenizer_dir`")
        tokenizer_dir = recorded["path"]
        if not Path(tokenizer_dir).exists():
            raise CheckpointError(
                f"{model_dir}: was trained on the tokenizer at {tokenizer_dir}, which is gone; "
                "pass its new location as `tokenizer_dir`"
            )
    tok_dir = resolve_checkpoint(tokenizer_dir)
    if recorded.get("hash") and content_hash(tok_dir) != recorded["hash"]:
        raise CheckpointError(
            f"{tok_dir}: is not the tokenizer {model_dir} was trained on (weights hash "
            f"{content_hash(tok_dir)[:12]} != {recorded['hash'][:12]}, trained with {recorded.get('path')})"
        )
    return tok_dir


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({err})") from None


def load(directory: str | Path, kind: str | None = None, *, image_size: int | None = None, **context: Any) -> torch.nn.Module:
    """Rebuild the model recorded in ``directory`` from the registry and load its weights (eval mode).

    ``image_size``: run a tokenizer at another square size than it was saved at, for one whose
    weights are the same at every size (``Tokenizer.any_size``: convolutional grids, raw patches);
    its grid of tokens grows with the images. ``native_image_size`` on the model says what it was saved at.
    """
    directory = Path(directory)
    meta = read_config(directory, kind)
    try:
        cls = registry.model_class(meta["kind"], meta["name"])
    except registry.RegistryError as err:
        raise CheckpointError(f"{directory}: {err}") from None
    cfg_path = directory / CONFIG_FILE
    native = meta["config"].get("image_size")
    if image_size is not None and image_size != native:
        if not getattr(cls, "any_size", False):
            raise CheckpointError(f"{directory}: a {meta['name']} model takes {native}x{native} images only (its weights "
                                  f"depend on the size), not {image_size}x{image_size}; evaluate it at {native}")
        meta["config"] = {**meta["config"], "image_size": image_size}
    try:
        config = config_from_dict(cls.Config, meta["config"])
        registry.check_config(config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{cfg_path}: {err}") from None
    if hasattr(cls, "context_from_checkpoint"):
        try:
            context = {**cls.context_from_checkpoint(meta.get("context", {}), directory), **context}
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{cfg_path}: 'context' is missing or malformed ({type(err).__name__}: {err}); "
                                  "this checkpoint was not written by trilemma's save") from None
    try:
        model = cls(config, **context)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as err:
        raise CheckpointError(f"{cfg_path}: cannot build {meta['name']} from its config ({err})") from None
    weights = load_weights(directory)
    expected = model.state_dict()
    for name, tensor in weights.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{directory / WEIGHTS_FILE}: tensor {name!r} has shape {list(tensor.shape)}, "
                f"the model in {CONFIG_FILE} expects {list(expected[name].shape)}"
            )
    try:  # not strict: a module's load hook may rename or fuse tensors of an earlier layout
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: weights do not match the model in {CONFIG_FILE} "
                              f"({str(err).splitlines()[-1].strip()})") from None
    missing, unexpected = sorted(result.missing_keys), sorted(result.unexpected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE}: weights do not match the model in {CONFIG_FILE} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.checkpoint_dir = directory
    if native is not None:
        model.native_image_size = native
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
