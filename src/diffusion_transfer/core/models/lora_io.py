"""A LoRA-trained model's adapter on disk, beside the merged model, in the
libraries' own formats (docs/LORA.md).

The fine-tuned model is saved merged (a plain diffusers UNet folder that
every stage loads); its LoRA weights travel with it as a plain attribute
(:class:`LoraWeights`, like the scheduler config) and :func:`write_lora`
writes them into ``<model folder>/lora/``:

- a model with diffusers' ``PeftAdapterMixin`` (``UNet2DConditionModel``):
  diffusers' LoRA format, ``pytorch_lora_weights.safetensors`` with keys
  ``unet.<module>.lora_A.weight`` and the ``LoraConfig`` in its metadata,
  written by ``StableDiffusionLoraLoaderMixin.save_lora_weights`` (what
  ``StableDiffusionPipeline.save_lora_weights`` is) as diffusers'
  train_text_to_image_lora.py saves it; read by
  ``unet.load_lora_adapter(folder, prefix="unet", use_safetensors=True)``
  (a Stable Diffusion pipeline's ``load_lora_weights(folder)`` reads the same
  file; diffusers 0.42's ``load_attn_procs`` reads Custom Diffusion only);
- a ``UNet2DModel`` (no LoRA loader in diffusers 0.42): peft's format,
  ``adapter_config.json`` (``LoraConfig.save_pretrained``) and
  ``adapter_model.safetensors`` with the keys ``PeftModel.save_pretrained``
  writes (``base_model.model.<module>.lora_A.weight``); read by
  ``PeftModel.from_pretrained(UNet2DModel.from_pretrained(source), folder)``
  or ``inject_adapter_in_model`` + ``set_peft_model_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE
from peft import LoraConfig
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

from .wrapping import attached, unwrap

__all__ = ["LORA_FOLDER", "LoraWeights", "attach_lora_weights", "lora_loading_line", "lora_weights_of",
           "write_lora"]

#: The adapter's folder inside the model folder.
LORA_FOLDER = "lora"
#: The key prefix of ``PeftModel.save_pretrained`` for a model that is not a transformers one.
PEFT_MODEL_PREFIX = "base_model.model."
#: ``save_lora_weights``' prefix of the UNet's keys in diffusers' format.
DIFFUSERS_PREFIX = "unet"
#: The files of each format, by the libraries' own names.
FILES = {"peft": (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME), "diffusers": (LORA_WEIGHT_NAME_SAFE,)}


@dataclass
class LoraWeights:
    """The trained LoRA of a merged model: ``kind`` ("peft" or "diffusers",
    the format it is saved in), peft's ``LoraConfig`` and the LoRA tensors
    under peft's keys (``get_peft_model_state_dict``: ``<module>.lora_A.weight``)."""

    kind: str
    config: LoraConfig
    state: dict[str, torch.Tensor]

    def config_dict(self) -> dict[str, Any]:
        """The config as JSON values (peft keeps ``target_modules`` as a set)."""
        return {k: sorted(v) if isinstance(v, set) else v for k, v in self.config.to_dict().items()}


def attach_lora_weights(model: torch.nn.Module, weights: LoraWeights | None) -> torch.nn.Module:
    """Record ``weights`` on ``model`` (a plain attribute: deep copies keep it; :func:`write_lora` saves it)."""
    if weights is not None:
        object.__setattr__(unwrap(model), "lora_weights", weights)
    return model


def lora_weights_of(model: torch.nn.Module) -> LoraWeights | None:
    return attached(model, "lora_weights", LoraWeights)


def write_lora(model: torch.nn.Module, folder: Path) -> Path | None:
    """Write the model's LoRA weights into ``folder/lora/`` in their format; None when it has none."""
    weights = lora_weights_of(model)
    if weights is None:
        return None
    out = Path(folder) / LORA_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.state.items()}
    if weights.kind == "diffusers":
        # deferred: the loader mixin imports transformers (seconds), and only this format needs it
        from diffusers.loaders import StableDiffusionLoraLoaderMixin

        StableDiffusionLoraLoaderMixin.save_lora_weights(str(out), unet_lora_layers=state, safe_serialization=True,
                                                         unet_lora_adapter_metadata=weights.config_dict())
    else:
        # deferred: safetensors' writer is needed only when saving
        from safetensors.torch import save_file

        weights.config.save_pretrained(str(out))
        save_file({PEFT_MODEL_PREFIX + k: v for k, v in state.items()}, str(out / SAFETENSORS_WEIGHTS_NAME),
                  metadata={"format": "pt"})
    return out


def lora_loading_line(kind: str, folder: str | Path, unet_class: str = "UNet2DModel",
                      source: str = "<source model folder>") -> str:
    """The line that loads the saved adapter onto the source model with the library's own loader."""
    lora = f"{folder}/{LORA_FOLDER}"
    if kind == "diffusers":
        return (f'from diffusers import {unet_class}; unet = {unet_class}.from_pretrained("{source}"); '
                f'unet.load_lora_adapter("{lora}", prefix="{DIFFUSERS_PREFIX}", use_safetensors=True)')
    return (f'from diffusers import {unet_class}; from peft import PeftModel; '
            f'unet = PeftModel.from_pretrained({unet_class}.from_pretrained("{source}"), "{lora}")')
