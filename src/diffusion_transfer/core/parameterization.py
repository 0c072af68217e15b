"""Read a diffusers ``scheduler_config.json`` into a :class:`NoiseSchedule`.

Only what defines the training process is used: the betas
(``beta_schedule``, ``num_train_timesteps``, ``beta_start``, ``beta_end``) and
the model's ``prediction_type``. Settings of diffusers' own sampling grid
(``timestep_spacing``, ``steps_offset``, ``set_alpha_to_one``, ``clip_sample``,
...) are accepted and ignored: the samplers here choose their own grid and
clipping. Anything else this code cannot honour raises
:class:`~diffusion_transfer.core.schedule.UnsupportedScheduleError`.
"""

from __future__ import annotations

import logging
from typing import Any

from .schedule import BETA_SCHEDULES, PREDICTION_TYPES, NoiseSchedule, UnsupportedScheduleError, make_schedule

__all__ = ["UnsupportedScheduleError", "schedule_from_scheduler_config"]

log = logging.getLogger(__name__)

#: diffusers' DDPMScheduler defaults for keys a config may omit.
DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "learned", "learned_range")
#: Keys that only shape diffusers' own sampling (or only matter when a rejected flag is on).
IGNORED = frozenset({
    "_class_name", "_diffusers_version", "timestep_spacing", "steps_offset", "set_alpha_to_one",
    "clip_sample", "clip_sample_range", "dynamic_thresholding_ratio", "sample_max_value", "skip_prk_steps",
    "timestep_type", "use_karras_sigmas", "interpolation_type", "solver_order", "algorithm_type",
    "solver_type", "lower_order_final", "variance_type",
})
_FALSE_FLAGS = ("trained_betas", "rescale_betas_zero_snr", "thresholding")


def schedule_from_scheduler_config(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> NoiseSchedule:
    """The :class:`NoiseSchedule` a diffusers scheduler config describes.

    ``overrides`` uses diffusers' key names; its non-null values win over
    ``config``. Raises :class:`UnsupportedScheduleError` (a ``ValueError``)
    naming the key, its value and what is supported for: a ``beta_schedule``
    other than linear / scaled_linear / squaredcos_cap_v2, ``trained_betas``
    not null, ``rescale_betas_zero_snr`` or ``thresholding`` true, an unknown
    ``prediction_type``, or a ``variance_type`` other than fixed_small /
    fixed_small_log / learned / learned_range / null.
    """
    if not isinstance(config, dict):
        raise TypeError(f"scheduler config must be a dict, got {type(config).__name__}")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})

    if cfg.get("trained_betas") is not None:
        raise UnsupportedScheduleError("trained_betas", _short(cfg["trained_betas"]), "null (betas from beta_schedule)")
    for key in ("rescale_betas_zero_snr", "thresholding"):
        if cfg.get(key):
            raise UnsupportedScheduleError(key, cfg[key], "false")
    variance = cfg.get("variance_type")
    if variance is not None and variance not in VARIANCE_TYPES:
        raise UnsupportedScheduleError("variance_type", variance, ", ".join(VARIANCE_TYPES) + ", null")
    kind = cfg["beta_schedule"]
    if kind not in BETA_SCHEDULES:
        raise UnsupportedScheduleError("beta_schedule", kind, ", ".join(BETA_SCHEDULES))
    if cfg["prediction_type"] not in PREDICTION_TYPES:
        raise UnsupportedScheduleError("prediction_type", cfg["prediction_type"], ", ".join(PREDICTION_TYPES))
    steps = cfg["num_train_timesteps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UnsupportedScheduleError("num_train_timesteps", steps, "a positive integer")
    unknown = sorted(set(cfg) - set(DEFAULTS) - IGNORED - set(_FALSE_FLAGS))
    if unknown:
        log.warning("ignoring scheduler config keys %s (they do not change the noise schedule here)", unknown)
    return make_schedule(kind, steps, float(cfg["beta_start"]), float(cfg["beta_end"]),
                         prediction_type=cfg["prediction_type"])


def _short(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"[{len(value)} values]"
    return value
