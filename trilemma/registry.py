"""One registry for every buildable thing: tokenizers, generators, quantizers, presets.

Models are classes with a dataclass ``Config`` attribute and a constructor
``cls(config, **context)``: the config is what ``config.json`` stores; the context is what the
caller injects (a generator gets ``spec=`` and ``text=``). A preset is a named config for a model:
``build("tokenizer", "vq-f4-shapes")`` and ``build("tokenizer", "vqvae", **fields)`` both work.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

KINDS = ("tokenizer", "generator", "decoder", "quantizer", "features")


@dataclass(frozen=True)
class Preset:
    kind: str
    name: str
    model: str  # registered model name this preset configures
    config: Any  # an instance of the model's Config dataclass
    description: str = ""
    # The training settings this preset was measured with (TrainConfig fields, e.g. {"lr": 2e-3}):
    # `trilemma train` takes them where no flag is given, so a preset trains as measured by default.
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)


# What a preset's recipe may set: the `trilemma train` flags --steps, --batch-size, --lr and --random-crop.
RECIPE_FIELDS = ("steps", "batch_size", "lr", "random_crop")

_MODELS: dict[str, dict[str, type]] = {k: {} for k in KINDS}
_PRESETS: dict[str, dict[str, Preset]] = {k: {} for k in KINDS}


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise RegistryError(f"unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")


def register(kind: str, name: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` buildable as ``build(kind, name)``."""
    _check_kind(kind)

    def decorator(cls: type) -> type:
        if name in _MODELS[kind] and _MODELS[kind][name] is not cls:
            raise RegistryError(f"{kind} {name!r} is already registered by {_MODELS[kind][name]}")
        if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
            raise TypeError(f"{cls.__name__} needs a dataclass `Config` attribute to be registered")
        _MODELS[kind][name] = cls
        cls.registry_name = name
        cls.registry_kind = kind
        return cls

    return decorator


def register_preset(kind: str, name: str, model: str, description: str = "", recipe: dict[str, Any] | None = None,
                    **fields: Any) -> Preset:
    """Name a config of a registered model (``model`` must be registered before presets use it);
    ``recipe``: the training settings it was measured with (``Preset.recipe``)."""
    cls = model_class(kind, model)
    if name in _PRESETS[kind] or name in _MODELS[kind]:
        raise RegistryError(f"{kind} preset {name!r} clashes with an existing name")
    unknown = set(recipe or {}) - set(RECIPE_FIELDS)
    if unknown:
        raise RegistryError(f"{kind} preset {name!r}: recipe fields {sorted(unknown)} are not among {RECIPE_FIELDS}")
    preset = Preset(kind, name, model, cls.Config(**fields), description, dict(recipe or {}))
    _PRESETS[kind][name] = preset
    return preset


def names(kind: str) -> list[str]:
    """Registered model names of a kind, sorted."""
    _check_kind(kind)
    _ensure_loaded()
    return sorted(_MODELS[kind])


def preset_names(kind: str) -> list[str]:
    _check_kind(kind)
    _ensure_loaded()
    return sorted(_PRESETS[kind])


def get_preset(kind: str, name: str) -> Preset:
    return _lookup(_PRESETS, kind, name, f"{kind} preset", "presets")


def model_class(kind: str, name: str) -> type:
    return _lookup(_MODELS, kind, name, kind, f"{kind}s")


def _lookup(table: dict[str, dict[str, Any]], kind: str, name: str, what: str, known: str) -> Any:
    _check_kind(kind)
    _ensure_loaded()
    if name not in table[kind]:
        raise RegistryError(f"unknown {what} {name!r}; known {known}: {', '.join(sorted(table[kind])) or 'none'}")
    return table[kind][name]


def resolve(kind: str, name: str, **cfg: Any) -> tuple[type, Any, dict[str, Any]]:
    """(model class, config, remaining context kwargs) for a model or preset name."""
    _check_kind(kind)
    _ensure_loaded()
    if name in _PRESETS[kind]:
        preset = _PRESETS[kind][name]
        cls, base = _MODELS[kind][preset.model], preset.config
    elif name in _MODELS[kind]:
        cls = _MODELS[kind][name]
        base = None
    else:
        known = sorted(_MODELS[kind]) + sorted(_PRESETS[kind])
        raise RegistryError(f"unknown {kind} {name!r}; known names: {', '.join(known) or 'none'}")
    field_names = {f.name for f in dataclasses.fields(cls.Config)}
    fields = {k: v for k, v in cfg.items() if k in field_names}
    context = {k: v for k, v in cfg.items() if k not in field_names}
    if base is None:
        base = cls.Config()
    config = dataclasses.replace(base, **merge_overrides(base, fields))
    check_config(config)
    return cls, config, context


def check_config(config: Any) -> None:
    """Refuse, naming the field and the value, a config value of the wrong type (``--set
    channels=abc``, ``"channels": "wide"`` in a config.json) or a negative number (``--set
    channels=-4``): caught here rather than deep inside a layer's constructor."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, allowed = getattr(config, f.name), _simple_types(hints.get(f.name))
        if allowed is None:
            continue  # dicts, tuples, nested configs: their own model checks them
        if value is None and type(None) in allowed:
            continue
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, tuple(allowed)):
            names = " or ".join(t.__name__ for t in allowed if t is not type(None))
            raise ValueError(f"config field {f.name} must be {names}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"config field {f.name} must be >= 0, got {value!r}")


def _simple_types(hint: Any) -> tuple | None:
    """The accepted types for a hint made of int / float / bool / str (and None), else None."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not args or any(a not in (int, float, bool, str, type(None)) for a in args):
        return None
    return tuple(args) + ((int,) if float in args and int not in args else ())


def merge_overrides(config: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """Field values for ``dataclasses.replace(config, ...)``: an override that is a dict, for a
    field that holds a dict (a tokenizer's ``quantizer``), is merged into it key by key (nested
    dicts likewise), so ``{"quantizer": {"codebook_size": 512}}`` keeps the quantizer's name; a dict
    with another ``name`` (``{"quantizer": {"name": "vq", ...}}``) replaces it whole. The
    CLI's ``--set quantizer.codebook_size=512`` and the Python API go through here alike."""
    return {k: _merge(getattr(config, k, None), v) for k, v in overrides.items()}


def _merge(current: Any, value: Any) -> Any:
    # A dict naming another model (a quantizer "name") replaces the old one: its fields would not fit.
    if isinstance(current, dict) and isinstance(value, dict) and value.get("name", current.get("name")) == current.get("name"):
        return {**current, **{k: _merge(current.get(k), v) for k, v in value.items()}}
    return value


def build(kind: str, name: str, **cfg: Any) -> Any:
    """Build a model by model or preset name; config fields override, other kwargs are context."""
    cls, config, context = resolve(kind, name, **cfg)
    return cls(config, **context)


# The packages whose class decorators fill the registry: the ground floor names them, and imports
# them on first use (importing them here at the top would be a cycle: they import this module).
MODEL_PACKAGES = ("trilemma.tokenizers", "trilemma.generators", "trilemma.decoders", "trilemma.metrics")
_LOADED = False


def _ensure_loaded() -> None:
    """Import ``MODEL_PACKAGES`` once, on the first lookup."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for package in MODEL_PACKAGES:
            importlib.import_module(package)
