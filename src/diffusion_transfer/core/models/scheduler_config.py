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

from ..parameterization import DEFAULTS
from ..schedule import BETA_SCHEDULES, PREDICTION_TYPES, make_schedule
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


_SCHEDULE_NAMES = (*BETA_SCHEDULES, "cosine")
_DDPM = "DDPM's linear schedule is beta_start 0.0001, beta_end 0.02, num_train_timesteps 1000"


def scheduler_config_problems(config: dict[str, Any], path: str | Path,
                              overrides: dict[str, Any] | None = None) -> list[str]:
    """Why the schedule of ``config`` (the scheduler config read from
    ``path``), with the ``schedule.<key>`` parameters ``overrides``, cannot be
    trained or sampled with: T >= 2, 0 < beta_start < beta_end < 1 for the
    linear schedules, every beta in (0, 1) and abar_t strictly decreasing
    (betas built by core/schedule.py's ``make_schedule``), a supported
    ``beta_schedule`` and ``prediction_type``. Each message names the key
    (``schedule.<key>`` for an override, else the key in ``path``) and the fix."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}, **given}

    def key(name: str) -> str:
        return f"schedule.{name}" if name in given else f"{name} in {path}"

    problems = []
    kind, prediction, steps = cfg["beta_schedule"], cfg["prediction_type"], cfg["num_train_timesteps"]
    if kind not in _SCHEDULE_NAMES:
        problems.append(f"{key('beta_schedule')} is {kind!r}; supported: {', '.join(_SCHEDULE_NAMES)}")
    if prediction not in PREDICTION_TYPES:
        problems.append(f"{key('prediction_type')} is {prediction!r}; supported: {', '.join(PREDICTION_TYPES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        problems.append(f"{key('num_train_timesteps')} is {steps!r}; a schedule needs an integer of at least 2 "
                        f"steps ({_DDPM})")
    if kind in ("linear", "scaled_linear"):
        problems += _beta_range_problems(cfg, key)
    if problems:
        return problems
    betas = make_schedule(kind, steps, float(cfg["beta_start"]), float(cfg["beta_end"])).betas
    outside = [i for i, b in enumerate(betas.tolist()) if not 0.0 < b < 1.0]
    if outside:
        return [f"the {kind} schedule of {path} has betas outside (0, 1) (at t={outside[:3]}); {_DDPM}"]
    abar = torch.cumprod(1.0 - betas, dim=0)
    if not bool((abar[1:] < abar[:-1]).all()):
        return [f"{key('beta_start')} ({cfg['beta_start']}) is too small for abar_t to decrease at every step "
                f"in float64; {_DDPM}"]
    return []


def _beta_range_problems(cfg: dict[str, Any], key) -> list[str]:
    problems = []
    for name in ("beta_start", "beta_end"):
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            problems.append(f"{key(name)} is {value!r}; a beta must lie strictly between 0 and 1 "
                            f"(a noise variance per step; {_DDPM})")
    if not problems and cfg["beta_start"] >= cfg["beta_end"]:
        problems.append(f"{key('beta_start')} ({cfg['beta_start']}) is not below {key('beta_end')} "
                        f"({cfg['beta_end']}): the noise added per step must grow from beta_start to beta_end; "
                        f"swap them or fix the one that is wrong ({_DDPM})")
    return problems
