"""A model's noise-schedule config, kept with the model.

A diffusers pipeline folder has ``unet/`` and ``scheduler/scheduler_config.json``;
a model folder written by this project has ``scheduler_config.json`` beside
``config.json``. :func:`load_unet` attaches what it finds as
``model.scheduler_config`` (a dict), :func:`save_unet` writes it back, so a
fine-tuned model keeps the schedule it was trained with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .wrapping import attached, unwrap

SCHEDULER_FILE = "scheduler_config.json"


def find_scheduler_config(folder: Path) -> Path | None:
    """The scheduler config of a model folder: its own file, a pipeline
    folder's ``scheduler/``, or, for ``<pipeline>/unet``, the sibling
    ``scheduler/``."""
    candidates = [folder / SCHEDULER_FILE, folder / "scheduler" / SCHEDULER_FILE]
    if folder.name == "unet":
        candidates.append(folder.parent / "scheduler" / SCHEDULER_FILE)
    return next((c for c in candidates if c.is_file()), None)


def read_scheduler_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable scheduler config (JSON): {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} is not a scheduler config: expected a JSON object")
    return config


def scheduler_config_of(model: torch.nn.Module) -> dict[str, Any] | None:
    """The scheduler config the model was made with, or None (unknown)."""
    config = attached(model, "scheduler_config", dict)
    return dict(config) if config is not None else None


def attach_scheduler_config(model: torch.nn.Module, config: dict[str, Any] | None) -> torch.nn.Module:
    """Record ``config`` on ``model`` (a plain attribute: deep copies keep it)."""
    if config is not None:
        object.__setattr__(unwrap(model), "scheduler_config", dict(config))
    return model


def write_scheduler_config(model: torch.nn.Module, folder: Path) -> None:
    config = scheduler_config_of(model)
    if config is not None:
        (folder / SCHEDULER_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
