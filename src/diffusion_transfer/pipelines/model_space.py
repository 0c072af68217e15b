"""Where a model denoises, said once for every stage: pixels, or the latent
space of its frozen autoencoder (``core/models/latent.py``), and the class
label a class-conditional model is bound to (``core/models/class_labels.py``).

Stages hand images in [-1, 1] to :func:`to_model_space` before the model
sees them and pass what the model makes through :func:`to_images` before any
pixel metric, so the methods, samplers and translators never know which kind
of model they run. Training latents are encoded once and cached on disk,
keyed on the images and the autoencoder's weights (:func:`cached_latents`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from diffusion_transfer.core.io import atomic_path
from diffusion_transfer.core.models.class_labels import (
    class_label_of,
    is_class_conditional,
    label_index,
    null_label,
    set_class_label,
)
from diffusion_transfer.core.models.latent import decode_from, encode_for, latent_codec_of, pixel_size

__all__ = ["bind_dataset_label", "cached_latents", "describe_model_space", "model_input_shape", "pixel_size",
           "to_images", "to_model_space"]


def model_input_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of what the model denoises: RGB pixels or the latents."""
    unet = getattr(model, "unet", model)
    size = unet.config.sample_size
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    return int(unet.config.in_channels), size, size


def to_model_space(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images`` (B, 3, H, W) in [-1, 1] as the model's inputs (encoded for a latent model)."""
    return encode_for(model, images)


def to_images(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the model made, as images in [-1, 1] (decoded for a latent model), without gradients."""
    with torch.no_grad():
        return decode_from(model, x)


def cached_latents(model: torch.nn.Module, images: torch.Tensor, cache_dir: str | Path) -> torch.Tensor:
    """:func:`to_model_space` of training ``images`` (float, [-1, 1]), encoded once:
    the file's name is a digest of the images and the autoencoder's weights."""
    codec = latent_codec_of(model)
    if codec is None:
        return images
    from safetensors.torch import load_file, save_file  # deferred: only latent models cache latents

    digest = hashlib.sha256(codec.fingerprint().encode())
    digest.update(images.detach().cpu().contiguous().numpy().tobytes())
    path = Path(cache_dir) / f"{digest.hexdigest()[:16]}.safetensors"
    if path.is_file():
        return load_file(str(path))["latents"]
    latents = codec.encode(images).cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"latents": latents}, str(tmp))
    return latents


def bind_dataset_label(model: torch.nn.Module, label: int | str | None, where: str) -> int | None:
    """Bind a dataset's ``class_label`` to a class-conditional ``model`` (None
    keeps the one bound when the source loaded); returns the bound index."""
    if label is not None:
        set_class_label(model, label_index(model, label, where))
    elif is_class_conditional(model) and class_label_of(model) is None:
        raise ValueError(f"{where} is not set and the source model is class-conditional: set the label its "
                         "images are trained and sampled with (an index, or 'unconditional')")
    return class_label_of(model)


def describe_model_space(model: torch.nn.Module) -> dict[str, Any]:
    """For reports: the latent line, the class label and the image size."""
    out: dict[str, Any] = {"image_size": pixel_size(model)}
    codec = latent_codec_of(model)
    if codec is not None:
        out["latent"] = codec.describe(model_input_shape(model)[1])
    if is_class_conditional(model):
        label = class_label_of(model)
        out["class_label"] = "unconditional (the null label)" if label == null_label(model) else label
    return out
