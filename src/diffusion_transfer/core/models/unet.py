"""Build, load and save the diffusers ``UNet2DModel`` used everywhere, and read
its noise prediction.

* :func:`build_unet` -- a fresh (random-init) UNet from a dict of
  ``UNet2DModel`` keyword arguments, validated before anything is allocated.
* :func:`load_unet` -- a local ``save_pretrained`` folder or, where the network
  allows, a Hugging Face hub id. Offline (``HF_HUB_OFFLINE=1``) or with the hub
  unreachable it fails fast with :class:`ModelLoadError` naming the path/id and
  how to provide the weights.
An :class:`~.adapted.AdaptedUNet` (a UNet plus A3FT / ANL modules) saves and
loads through the same two functions, as ``unet/`` plus its added modules.

* :func:`save_unet` -- ``save_pretrained`` (safetensors) into a temporary
  sibling folder, then an atomic swap into place: a crash never leaves a
  half-written model folder behind.
* :func:`predict_eps` -- ``model(x_t, t).sample``, keeping only the eps half of
  a learned-variance (6-channel) output, converted to eps per the schedule's
  ``prediction_type``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from .adapted import AdaptedUNet, is_adapted_folder, load_adapted, save_adapted
from .adm_extras import apply_adm_extras
from .class_labels import (
    CLASS_CONTEXT_KEY,
    freeze_class_context_bias,
    has_class_context,
    is_class_conditional,
    read_class_label,
    set_class_label,
    write_class_label,
)
from .hub import HUB_ID as _HUB_ID, HUB_PATTERNS, cached_snapshot, hub_cache_dir, hub_missing, hub_offline
from .latent import attach_latent_codec, latent_codec_of, load_latent_codec
from .lora_io import write_lora
from .pipeline_folder import attach_pipeline_index, read_pipeline_index, write_pipeline_parts
from .scheduler_config import (
    attach_scheduler_config,
    find_scheduler_config,
    read_scheduler_config,
    write_scheduler_config,
)
from .text_to_image import attach_text_conditioning, is_text_to_image_folder, load_text_conditioning, \
    text_conditioning_of
from .wrapping import unwrap

if TYPE_CHECKING:
    from ..schedule import NoiseSchedule

__all__ = [
    "ModelLoadError",
    "build_unet",
    "learns_variance",
    "load_unet",
    "model_output",
    "predict_eps",
    "save_unet",
]

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the path/id and the fix."""


def build_unet(config: dict[str, Any], cls: type = UNet2DModel) -> UNet2DModel:
    """A randomly initialised ``UNet2DModel(**config)`` (or ``cls``: a class-context
    ``UNet2DConditionModel``, made from its config).

    ``in_channels`` is 3 (RGB) or, for a latent model, the autoencoder's
    latent channels; ``out_channels`` is ``in_channels`` (eps) or twice that
    (eps + learned variance); ``sample_size`` must be a positive int (or a pair).
    """
    if not isinstance(config, dict):
        raise ValueError(f"UNet config must be a dict of UNet2DModel arguments, got {type(config).__name__}")
    cfg = dict(config)
    if "sample_size" not in cfg:
        raise ValueError("UNet config is missing 'sample_size' (the image resolution, e.g. 32)")
    size = cfg["sample_size"]
    sizes = list(size) if isinstance(size, (list, tuple)) else [size]
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f"UNet config 'sample_size' must be a positive int, got {size!r}")
    in_ch = cfg.setdefault("in_channels", 3)
    if not isinstance(in_ch, int) or isinstance(in_ch, bool) or in_ch < 1:
        raise ValueError(f"UNet config 'in_channels' must be a positive int (3 for RGB), got {in_ch!r}")
    out_ch = cfg.setdefault("out_channels", in_ch)
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(
            f"UNet config 'out_channels' must be {in_ch} (eps) or {2 * in_ch} (eps + learned variance), got {out_ch!r}"
        )
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        if key in cfg and isinstance(cfg[key], list):
            cfg[key] = tuple(cfg[key])
    try:
        return UNet2DModel(**cfg) if cls is UNet2DModel else freeze_class_context_bias(cls.from_config(cfg))
    except TypeError as exc:  # unknown keyword
        raise ValueError(f"invalid UNet config: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"invalid UNet config: {exc}") from exc


def _offline() -> bool:
    return hub_offline()


def _how_to(source: str) -> str:
    return (
        f"Put a diffusers UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors, "
        f"as written by save_pretrained / save_unet) at {source!r}, or set the parameter to such a folder."
    )


def _load_folder(folder: Path) -> UNet2DModel:
    pipeline = folder
    if not (folder / CONFIG_NAME).is_file() and (folder / "unet" / CONFIG_NAME).is_file():
        folder = folder / "unet"  # a pipeline folder: use its unet/ subfolder
    if not (folder / CONFIG_NAME).is_file():
        raise ModelLoadError(f"UNet folder {str(folder)!r} has no {CONFIG_NAME}. {_how_to(str(folder))}")
    if not any((folder / name).is_file() for name in WEIGHT_NAMES):
        raise ModelLoadError(
            f"UNet folder {str(folder)!r} has no weights file (expected {WEIGHT_NAMES[0]} "
            f"or {WEIGHT_NAMES[1]}). {_how_to(str(folder))}"
        )
    if _config_class(folder) == "UNet2DConditionModel":  # the LDM ImageNet form: a class as its context
        try:
            unet = UNet2DConditionModel.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # corrupt weights, mismatched config, ...
            raise ModelLoadError(f"could not load the UNet from {str(folder)!r}: {exc}") from exc
        if not has_class_context(unet):
            if is_text_to_image_folder(pipeline):  # Stable Diffusion layout: the text encoder beside it
                return unet
            raise ModelLoadError(f"{str(folder)!r} holds a UNet2DConditionModel whose context is not a class "
                                 f"(no {CLASS_CONTEXT_KEY} in its config.json) and no text_encoder/ and "
                                 "tokenizer/ beside it: give the whole Stable Diffusion pipeline folder")
        return freeze_class_context_bias(unet)
    try:
        # an improved-diffusion conversion: per-layer head counts diffusers' config cannot say, a frozen table
        return apply_adm_extras(UNet2DModel.from_pretrained(str(folder), local_files_only=True))
    except Exception as exc:  # corrupt weights, mismatched config, ...
        raise ModelLoadError(f"could not load the UNet from {str(folder)!r}: {exc}") from exc


def _config_class(folder: Path) -> str | None:
    try:
        return json.loads((folder / CONFIG_NAME).read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None  # from_pretrained says what is wrong


def _load_local(path: Path, text: str) -> torch.nn.Module:
    if is_adapted_folder(path):  # base UNet + added modules (a3ft, anl)
        try:
            model = load_adapted(path, _load_folder)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"could not load the adapted model from {text!r}: {exc}") from exc
    else:
        model = _load_folder(path)
    try:  # a latent model: the frozen autoencoder beside unet/
        attach_latent_codec(model, load_latent_codec(path))
    except Exception as exc:
        raise ModelLoadError(f"could not load the autoencoder of {text!r}: {exc}") from exc
    try:  # a text-to-image model: the frozen text encoder and tokenizer beside unet/
        attach_text_conditioning(model, load_text_conditioning(path))
    except Exception as exc:
        raise ModelLoadError(f"could not load the text encoder or tokenizer of {text!r}: {exc}") from exc
    if is_class_conditional(model):  # the label a fine-tuned model was trained with, or none bound yet
        set_class_label(model, read_class_label(path))
    return attach_pipeline_index(model, read_pipeline_index(path))


def load_unet(source: str | os.PathLike[str]) -> UNet2DModel:
    """Load a UNet from a local ``save_pretrained`` folder or a hub id.

    Raises :class:`ModelLoadError` (never a deep traceback) when the folder is
    incomplete, or when ``source`` is not a folder and the hub cannot be used.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        config_file = find_scheduler_config(path)
        try:
            config = read_scheduler_config(config_file) if config_file else None
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        return attach_scheduler_config(_load_local(path, text), config)
    if path.exists():
        raise ModelLoadError(f"{text!r} is a file, not a UNet folder. {_how_to(text)}")
    if not _HUB_ID.match(text):
        raise ModelLoadError(f"UNet folder {text!r} does not exist. {_how_to(text)}")
    # A hub id. Offline, only the local cache may serve it (no network calls): the snapshot the
    # pre-run check looked at (core/models/hub.py), or an error naming what it lacks.
    if _offline():
        why = hub_missing(text)
        if why is not None:
            raise ModelLoadError(why)
        snapshot = cached_snapshot(text)
    else:
        try:
            from huggingface_hub import snapshot_download  # deferred: only a Hub id needs it

            # Only the parts this project uses: a bare UNet repo, or a pipeline's used parts (HUB_PATTERNS).
            snapshot = Path(snapshot_download(text, allow_patterns=HUB_PATTERNS, cache_dir=str(hub_cache_dir())))
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ModelLoadError(f"{text!r} is not a local folder and could not be loaded as a hub id: the hub "
                                 f"could not provide it ({type(exc).__name__}: {first}). {_how_to(text)}") from exc
    config_file = find_scheduler_config(snapshot)
    return attach_scheduler_config(_load_local(snapshot, text),
                                   read_scheduler_config(config_file) if config_file else None)


def save_unet(model: torch.nn.Module, folder: str | os.PathLike[str]) -> Path:
    """``save_pretrained`` (safetensors) into ``folder`` atomically.

    The model is written to a temporary sibling folder which then replaces
    ``folder`` with renames, so readers see either the old or the new model.
    """
    model = unwrap(model)
    adapted = isinstance(model, AdaptedUNet)
    if not adapted and not hasattr(model, "save_pretrained"):
        raise TypeError(f"save_unet needs a diffusers model or an AdaptedUNet, got {type(model).__name__}")
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        if adapted:
            save_adapted(model, tmp)
            codec = latent_codec_of(model)
            if codec is not None:  # the autoencoder beside unet/, where load_unet finds it
                codec.autoencoder.save_pretrained(str(tmp / codec.part), safe_serialization=True)
            write_scheduler_config(model, tmp)
        elif not write_pipeline_parts(model, tmp):  # a pipeline folder in, a pipeline folder out
            model.save_pretrained(str(tmp), safe_serialization=True)
            write_scheduler_config(model, tmp)
        write_class_label(model, tmp)
        write_lora(model, tmp)  # a LoRA-trained model's adapter, beside the merged model (lora_io.py)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def learns_variance(model: torch.nn.Module) -> bool:
    """True when the model outputs eps and a variance term (6 channels)."""
    cfg = getattr(unwrap(model), "config", None)
    if cfg is None:
        return False
    out_ch = cfg.get("out_channels") if isinstance(cfg, dict) else getattr(cfg, "out_channels", None)
    in_ch = cfg.get("in_channels", 3) if isinstance(cfg, dict) else getattr(cfg, "in_channels", 3)
    return out_ch == 2 * in_ch


def model_output(
    model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None
) -> torch.Tensor:
    """The raw output tensor of ``model(x_t, t)`` (all channels); a
    ``condition`` is passed as ``condition=`` (ANL's CLIP embeddings) or, to
    a text-to-image model, as ``encoder_hidden_states=`` (the text encoder's
    hidden states of a prompt per sample, core/models/text_to_image.py)."""
    if condition is None:
        out = model(x_t, t)
    elif text_conditioning_of(model) is not None:
        out = model(x_t, t, encoder_hidden_states=condition.to(x_t.dtype))
    else:
        out = model(x_t, t, condition=condition)
    return out.sample if hasattr(out, "sample") else out


def predict_eps(
    model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None,
    *, schedule: NoiseSchedule,
) -> torch.Tensor:
    """The noise prediction eps(x_t, t) of ``model``; (B, C, H, W) like ``x_t``.

    ``t`` is an integer tensor of shape (B,) (or a scalar). For a
    learned-variance model (2C output channels) the first half is used. The
    output is converted to eps per ``schedule.prediction_type``.
    """
    out = model_output(model, x_t, t, condition)
    c = x_t.shape[1]
    if out.shape[1] == 2 * c:
        out = out[:, :c]
    return schedule.eps_from_output(out, x_t, t)
