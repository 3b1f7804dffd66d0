"""Import a local diffusers autoencoder as a trilemma tokenizer: ``import_diffusers(path)``.

``path`` is a model directory (``config.json`` + ``diffusion_pytorch_model.safetensors``, ``.bin``,
sharded, or a single variant such as ``.fp16.safetensors``; weights load as float32) or a whole
pipeline directory (``model_index.json``) whose ``vae`` / ``vqvae`` component is used. The class in
``config.json`` picks the wrapper: a ``VQModel`` makes discrete tokens (``diffusers_vq.py``), the
other autoencoders continuous ones (``diffusers_ae.py``). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from trilemma.tokenizers.base import Tokenizer
from trilemma.tokenizers.diffusers_ae import POSTERIOR, DiffusersAE, DiffusersAEConfig
from trilemma.tokenizers.diffusers_files import load_local, plain_config
from trilemma.tokenizers.diffusers_vq import DiffusersVQ, DiffusersVQConfig


def import_diffusers(
    path: str | Path,
    image_size: int = 256,
    *,
    pixel_range: tuple[float, float] | None = None,
    sample: bool = False,
    decoder: str | Path | None = None,
) -> Tokenizer:
    """A trilemma tokenizer from the diffusers autoencoder in the local directory ``path``.

    ``pixel_range``: the range the model takes; None guesses (0, 1) for aMUSEd's VQ-GAN (an
    ``Amused*`` pipeline, or a VQModel config with ``lookup_from_codebook``, a flag diffusers added
    for it) and (-1, 1) for every other model. ``sample``: encode draws from the posterior instead of
    taking its mean (KL autoencoders only). ``decoder``: a ``ConsistencyDecoderVAE`` directory whose
    decoder replaces an ``AutoencoderKL``'s own.
    """
    model, name, pipeline = load_local(path)
    config = plain_config(model.config)
    if name == "VQModel":
        if sample or decoder is not None:
            raise ValueError(f"{path}: a VQModel's tokens are codebook ids; `sample` and `decoder` are for "
                             f"continuous autoencoders ({', '.join(POSTERIOR)})")
        if pixel_range is None:
            amused = (pipeline or "").startswith("Amused") or bool(config.get("lookup_from_codebook"))
            pixel_range = (0.0, 1.0) if amused else (-1.0, 1.0)
        tokenizer: Tokenizer = DiffusersVQ(DiffusersVQConfig(image_size=image_size, vq_config=config,
                                                             pixel_range=_floats(pixel_range)))
        # Strict load into the model rebuilt from our config: proves config.json alone rebuilds it.
        tokenizer.vq.load_state_dict(model.state_dict())
        return tokenizer.eval()
    consistency = None
    if decoder is not None:
        consistency, decoder_name, _ = load_local(decoder)
        if decoder_name != "ConsistencyDecoderVAE":
            raise ValueError(f"`decoder` {decoder}: holds {decoder_name}; a decoder that replaces an "
                             "AutoencoderKL's is a ConsistencyDecoderVAE")
    tokenizer = DiffusersAE(DiffusersAEConfig(
        image_size=image_size, class_name=name, model_config=config, pixel_range=_floats(pixel_range or (-1.0, 1.0)),
        sample=sample, decoder_config=plain_config(consistency.config) if consistency is not None else {},
    ))
    tokenizer.ae.load_state_dict(model.state_dict())
    if consistency is not None:
        tokenizer.consistency.load_state_dict(consistency.state_dict())
    return tokenizer.eval()


def _floats(pair: tuple[float, float]) -> tuple[float, float]:
    return float(pair[0]), float(pair[1])
