"""A pipeline folder in, a pipeline folder out.

A source model given as a diffusers pipeline folder (``model_index.json``
with ``unet/``, ``scheduler/`` and, for a latent model, ``vqvae/`` or
``vae/``) keeps its ``model_index.json`` as ``model.pipeline_index`` (a plain
attribute, like the scheduler config), and :func:`save_unet` writes the
fine-tuned model back in the same layout, so that
``DiffusionPipeline.from_pretrained(folder)`` loads it (:func:`loading_line`).
A model given as a bare UNet folder is saved as a bare UNet folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .latent import latent_codec_of
from .scheduler_config import SCHEDULER_FILE, scheduler_config_of
from .text_to_image import text_conditioning_of
from .wrapping import attached, unwrap

__all__ = ["INDEX_FILE", "attach_pipeline_index", "loading_line", "pipeline_index_of", "read_pipeline_index",
           "save_without_origin",
           "write_pipeline_parts"]

INDEX_FILE = "model_index.json"


def read_pipeline_index(folder: Path) -> dict[str, Any] | None:
    """``folder/model_index.json`` as a dict, or None when there is none."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        return None
    value = json.loads(path.read_text())
    return value if isinstance(value, dict) else None


def attach_pipeline_index(model: torch.nn.Module, index: dict[str, Any] | None) -> torch.nn.Module:
    if index is not None:
        object.__setattr__(unwrap(model), "pipeline_index", dict(index))
    return model


def pipeline_index_of(model: torch.nn.Module) -> dict[str, Any] | None:
    index = attached(model, "pipeline_index", dict)
    return dict(index) if index is not None else None


def _default_index(model: torch.nn.Module) -> dict[str, Any] | None:
    """The index of a model that came without one; None for ``vae/`` beside an
    unconditional UNet, which no diffusers pipeline holds (``LDMPipeline``
    takes a ``vqvae/``; the Stable Diffusion ones need a text encoder)."""
    codec = latent_codec_of(model)
    if codec is None:
        return {"_class_name": "DDPMPipeline"}
    return {"_class_name": "LDMPipeline"} if codec.part == "vqvae" else None


def write_pipeline_parts(model: torch.nn.Module, folder: Path) -> bool:
    """Write ``model`` into the empty ``folder`` as a pipeline folder when it
    came from one or is a latent model: ``unet/``, ``scheduler/``, the
    autoencoder and ``model_index.json`` listing exactly those. False (nothing
    written) for a model loaded from a bare UNet folder."""
    import diffusers  # deferred: only the version string is needed, and only when saving a pipeline

    index, codec = pipeline_index_of(model), latent_codec_of(model)
    if index is None and codec is None:
        return False
    index = index or _default_index(model)
    unet = unwrap(model)
    unet.save_pretrained(str(folder / "unet"), safe_serialization=True)
    parts: dict[str, list[str]] = {"unet": ["diffusers", type(unet).__name__]}
    scheduler = scheduler_config_of(model)
    if scheduler is not None:
        (folder / "scheduler").mkdir()
        scheduler = {"_class_name": _listed_class(index or {}, "scheduler") or "DDPMScheduler", **scheduler}
        (folder / "scheduler" / SCHEDULER_FILE).write_text(json.dumps(scheduler, indent=2, sort_keys=True))
        parts["scheduler"] = ["diffusers", scheduler["_class_name"]]
    if codec is not None:
        save_without_origin(codec.autoencoder, folder / codec.part)
        parts[codec.part] = ["diffusers", codec.kind]
    text = text_conditioning_of(model)
    if text is not None:  # a text-to-image model: its frozen text encoder and tokenizer (text_to_image.py)
        parts.update(text.save(folder))
    if index is None:  # the parts alone, each loaded by its class (loading_line)
        return True
    # the index's settings (requires_safety_checker) and the components it saved as null (safety_checker)
    settings = {k: v for k, v in index.items() if k.startswith("_") or not isinstance(v, list) or v[-1] is None}
    settings["_diffusers_version"] = diffusers.__version__
    (folder / INDEX_FILE).write_text(json.dumps({**settings, **parts}, indent=2, sort_keys=True))
    return True


def save_without_origin(module: torch.nn.Module, folder: Path) -> None:
    """``save_pretrained`` without the ``_name_or_path`` diffusers records for a
    module loaded from a folder: an absolute path of this machine, which would
    make two clones' outputs differ."""
    module.save_pretrained(str(folder), safe_serialization=True)
    config = Path(folder) / "config.json"
    values = json.loads(config.read_text())
    if values.pop("_name_or_path", None) is not None:
        config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def _listed_class(index: dict[str, Any], part: str) -> str | None:
    spec = index.get(part)
    return spec[-1] if isinstance(spec, list) and spec and isinstance(spec[-1], str) else None


def loading_line(model: torch.nn.Module, folder: str | Path) -> str:
    """The one line that loads ``model`` once saved in ``folder``: diffusers'
    own loader for a pipeline folder or a bare UNet folder; this project's
    ``load_unet`` for a model with added modules (A3FT, ANL, TAN), which
    diffusers' classes cannot hold."""
    base = unwrap(model)
    if hasattr(base, "adapter"):
        return f'from diffusion_transfer.core.models import load_unet; load_unet("{folder}")'
    codec = latent_codec_of(model)
    if pipeline_index_of(model) is None and codec is not None and _default_index(model) is None:
        unet = type(base).__name__
        return (f'from diffusers import {codec.kind}, {unet}; unet = {unet}.from_pretrained("{folder}", '
                f'subfolder="unet"); {codec.part} = {codec.kind}.from_pretrained("{folder}", '
                f'subfolder="{codec.part}")')
    if pipeline_index_of(model) is not None or codec is not None:
        return f'from diffusers import DiffusionPipeline; DiffusionPipeline.from_pretrained("{folder}")'
    return f'from diffusers import UNet2DModel; UNet2DModel.from_pretrained("{folder}")'
