"""Reading a local diffusers model directory (the layout ``save_pretrained`` writes; never the hub).

What the diffusers tokenizers (``diffusers_vq.py``, ``diffusers_ae.py``) share: finding the model in
a model or pipeline directory, checking its ``config.json`` names a supported class, finding its
weights (plain, sharded, or one variant such as ``.fp16``), loading it in float32 with
``local_files_only``, and the pixel range the model takes.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

CONFIG_NAME = "config.json"
PIPELINE_INDEX = "model_index.json"
WEIGHTS_STEM = "diffusion_pytorch_model"
WEIGHTS_NAMES = tuple(f"{WEIGHTS_STEM}.{ext}" for ext in ("safetensors", "safetensors.index.json", "bin", "bin.index.json"))
EXPECTED = f"{CONFIG_NAME} and {WEIGHTS_STEM}.safetensors (or .bin)"

# diffusers class -> the trilemma tokenizer that wraps it
SUPPORTED = {
    "VQModel": "diffusers-vq",
    "AutoencoderKL": "diffusers-ae",
    "AutoencoderKLFlux2": "diffusers-ae",
    "AutoencoderDC": "diffusers-ae",
    "AutoencoderTiny": "diffusers-ae",
    "ConsistencyDecoderVAE": "diffusers-ae",
}
PIPELINE_PARTS = ("vae", "vqvae")  # the component a pipeline directory's autoencoder is usually called


def diffusers_class(name: str) -> type:
    """The diffusers model class ``name``; diffusers is imported here, where it is needed (2-3 s)."""
    if name not in SUPPORTED:
        raise ValueError(f"diffusers class {name!r} is not supported; supported: {', '.join(SUPPORTED)}")
    try:
        import diffusers
    except ImportError as err:
        raise ImportError(f"importing a {name} needs diffusers ({err}); pip install diffusers") from None
    return getattr(diffusers, name)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: corrupt JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def find_model_dir(path: Path) -> tuple[Path, str | None]:
    """(directory holding the autoencoder, the pipeline class if ``path`` is a whole pipeline)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such directory; expected a diffusers model directory ({EXPECTED}) "
                                f"or a pipeline directory with a vae/ or vqvae/ subfolder")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: is a file; expected a diffusers model directory ({EXPECTED})")
    if (path / CONFIG_NAME).is_file() or not (path / PIPELINE_INDEX).is_file():
        return path, None
    index = read_json(path / PIPELINE_INDEX)
    pipeline = str(index.get("_class_name", "pipeline"))
    components = {k: v for k, v in index.items() if not k.startswith("_")}
    parts = sorted(k for k, v in components.items() if isinstance(v, list) and v and v[-1] in SUPPORTED)
    if not parts:
        raise ValueError(f"{path}: a {pipeline} directory without an autoencoder trilemma imports (components: "
                         f"{', '.join(sorted(components)) or 'none'}; supported classes: {', '.join(SUPPORTED)})")
    part = next((p for p in PIPELINE_PARTS if p in parts), parts[0])
    if not (path / part).is_dir():
        raise FileNotFoundError(f"{path / part}: missing; {path / PIPELINE_INDEX} lists a {components[part][-1]} "
                                f"there ({EXPECTED})")
    return path / part, pipeline


def model_class_name(model_dir: Path) -> str:
    """The supported diffusers class ``model_dir/config.json`` names (older VQModel configs name none)."""
    config_path = model_dir / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; a diffusers model directory holds {EXPECTED}")
    config = read_json(config_path)
    if {"kind", "name", "format_version"} <= set(config):
        raise ValueError(f"{model_dir}: is already a trilemma checkpoint ({config['kind']} {config['name']!r}); "
                         "use it directly instead of importing it")
    name = config.get("_class_name")
    if name is None and "num_vq_embeddings" in config:
        return "VQModel"
    if name not in SUPPORTED:
        raise ValueError(f"{config_path}: holds a {name or 'non-diffusers'} config; trilemma imports "
                         f"{', '.join(SUPPORTED)}")
    return str(name)


def weights_variant(model_dir: Path) -> str | None:
    """None for the plain weights file; else the variant (``fp16`` ...) the directory only has."""
    if any((model_dir / name).is_file() for name in WEIGHTS_NAMES):
        return None
    variants = sorted({p.name.split(".")[1].split("-")[0]  # fp16, or fp16-00001-of-00002 when sharded
                       for ext in ("safetensors", "bin") for p in model_dir.glob(f"{WEIGHTS_STEM}.*.{ext}")
                       if p.name.count(".") == 2})
    if not variants:
        raise FileNotFoundError(f"{model_dir}: no weights file; expected {WEIGHTS_STEM}.safetensors (or .bin, "
                                f"or a variant such as {WEIGHTS_STEM}.fp16.safetensors) beside {CONFIG_NAME}")
    return "fp32" if "fp32" in variants else variants[0]  # loaded into float32 either way


def load_local(path: str | Path) -> tuple[torch.nn.Module, str, str | None]:
    """(the diffusers model in float32 and eval mode, its class name, the pipeline it came from)
    from a local model or pipeline directory; nothing is downloaded."""
    model_dir, pipeline = find_model_dir(Path(path))
    name = model_class_name(model_dir)
    variant = weights_variant(model_dir)
    try:
        # A local directory never reaches the hub; local_files_only makes sure of it.
        model = diffusers_class(name).from_pretrained(model_dir, local_files_only=True, variant=variant)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise ValueError(f"{model_dir}: diffusers could not load it as a {name}: {err}") from err
    return model.float().eval(), name, pipeline


def plain_config(config: Any) -> dict[str, Any]:
    """A diffusers FrozenDict as JSON, without its metadata keys (``_class_name``, ``_name_or_path``...)."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


def from_config(name: str, config: dict[str, Any]) -> torch.nn.Module:
    """The diffusers ``name`` model (float32) built from ``config``, without the entries some classes
    record beside their arguments (``block_out_channels`` of AutoencoderTiny, ``force_upcast``),
    which ``from_config`` would warn about on every load."""
    cls = diffusers_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in config.items() if k in accepted}).float()


def check_rgb(model: torch.nn.Module, name: str) -> None:
    """Refuse a model that does not map RGB to RGB (ConsistencyDecoderVAE names its input
    ``encoder_in_channels``; DC-AE records no output channels)."""
    c = model.config
    channels = (c.get("in_channels", c.get("encoder_in_channels")), c.get("out_channels", 3))
    if channels != (3, 3):
        raise ValueError(f"trilemma tokenizers take RGB images; this {name} has {channels[0]} input and "
                         f"{channels[1]} output channels")


def check_pixel_range(pixel_range: tuple[float, float]) -> None:
    lo, hi = pixel_range
    if not lo < hi:
        raise ValueError(f"`pixel_range` must be (low, high) with low < high, got {tuple(pixel_range)}")


# Pixel range: the identity (no arithmetic at all) for models that take [-1, 1] as trilemma does.
def to_model(images: torch.Tensor, pixel_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = pixel_range
    return images if (lo, hi) == (-1, 1) else (images + 1) / 2 * (hi - lo) + lo


def from_model(out: torch.Tensor, pixel_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = pixel_range
    return out if (lo, hi) == (-1, 1) else (out - lo) / (hi - lo) * 2 - 1


def downsampling(levels: int) -> int:
    """The factor of an encoder whose every level but the last halves the image (diffusers' rule)."""
    return 2 ** (levels - 1)


def check_image_size(image_size: int, factor: int, name: str) -> None:
    if image_size <= 0 or image_size % factor:
        raise ValueError(f"`image_size` {image_size} is not a positive multiple of this {name}'s downsampling "
                         f"factor {factor}")
