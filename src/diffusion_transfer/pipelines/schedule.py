"""The noise schedule a run uses: the model's own, as it was made.

A model loaded from a diffusers model or pipeline folder carries its
scheduler config (``core.models.scheduler_config``); ``schedule.<key>``
parameters override single values. A model without one gets DDPM's linear
schedule (the FaceWorld models were trained with it)."""

from __future__ import annotations

from typing import Any

import torch

from diffusion_transfer.core.models.scheduler_config import scheduler_config_of
from diffusion_transfer.core.parameterization import schedule_from_scheduler_config
from diffusion_transfer.core.schedule import NoiseSchedule, UnsupportedScheduleError
from diffusion_transfer.project.schema import InvalidParametersError, ScheduleParams, parse

#: DDPM (Ho et al.): the schedule of every paper here and of the FaceWorld models.
PROJECT_DEFAULT = {"beta_schedule": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                   "prediction_type": "epsilon"}


def resolve_schedule(model: torch.nn.Module | None, schedule: ScheduleParams | dict[str, Any] | None,
                     config: dict[str, Any] | None = None, where: str = "the model") -> tuple[NoiseSchedule, dict]:
    """The schedule and a description of where it came from (for reports).
    ``config`` stands in for the model's scheduler config when the model is
    not loaded (the pre-run check reads it from the folder)."""
    p = parse(ScheduleParams, schedule, "schedule")
    overrides = p.model_dump(exclude_none=True)
    if config is None and model is not None:
        config = scheduler_config_of(model)
    origin = "the model's scheduler config" if config is not None else \
        "the project default, DDPM's (the model has no scheduler config)"
    try:
        sched = schedule_from_scheduler_config(config if config is not None else PROJECT_DEFAULT, overrides)
    except UnsupportedScheduleError as err:
        key = f"schedule.{err.key}" if err.key in overrides else f"{where}'s scheduler config"
        raise InvalidParametersError(
            f"Invalid noise schedule in {key}: {err}. Set a supported value with 'schedule.{err.key}' "
            "or use a model whose scheduler this project can train and sample with.") from None
    info = {**sched.describe(), "source": origin, "overridden": sorted(overrides)}
    return sched, info


def model_schedule(model: torch.nn.Module | None, schedule: ScheduleParams | dict[str, Any] | None) -> NoiseSchedule:
    return resolve_schedule(model, schedule)[0]


def describe_schedule(info: dict[str, Any]) -> str:
    """One line for a report."""
    betas = f" betas {info['beta_start']:g}..{info['beta_end']:g}" if info.get("beta_start") is not None else ""
    text = (f"{info['beta_schedule']}{betas}, T={info['num_train_timesteps']}, {info['prediction_type']} "
            f"prediction, from {info['source']}")
    if info.get("overridden"):
        text += "; overridden by " + ", ".join(f"schedule.{k}" for k in info["overridden"])
    return text
