"""Reaching the model under its wrappers, and what is attached to it.

DDP / accelerate keep the real module under ``.module``; an
:class:`~.adapted.AdaptedUNet` keeps its UNet under ``.unet``. What a model was
made with (scheduler config, pipeline index, autoencoder, class label) is a
plain attribute of the unwrapped model or of its ``.unet``."""

from __future__ import annotations

from typing import Any

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP / accelerate wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def attached(model: torch.nn.Module, name: str, kind: type | tuple[type, ...]) -> Any:
    """The attribute ``name`` of the unwrapped model or of its ``.unet`` when it is a ``kind``; else None."""
    model = unwrap(model)
    for m in (model, getattr(model, "unet", None)):
        value = getattr(m, name, None) if m is not None else None
        if isinstance(value, kind):
            return value
    return None
