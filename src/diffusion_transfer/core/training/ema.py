"""EMA decay per optimiser step, with the warm-up of diffusers' ``EMAModel``.

A constant decay ``d`` leaves ``d ** steps`` of the *starting* weights in the
EMA: 0.9999 ** 5000 = 0.61, so a 5,000-step run would evaluate a model that is
61% its initial weights (random ones when training from scratch). The
warm-up raises the decay from 0 towards ``ema_decay`` as training proceeds,
exactly as ``diffusers.training_utils.EMAModel.get_decay`` (``update_after_step
= 0``, ``min_decay = 0``) does for its ``optimization_step``, which counts the
EMA updates from 1:

- ``step = max(0, optimization_step - 1)``; the decay is 0 when ``step <= 0``
  (the first update copies the weights);
- ``"diffusers"`` (``use_ema_warmup=False``): ``min(ema_decay, (1 + step) / (10 + step))``;
- ``"power"`` (``use_ema_warmup=True``): ``min(ema_decay, 1 - (1 + step / inv_gamma) ** -power)``;
- ``"none"``: ``ema_decay`` at every update, the first included (the loop's
  behaviour before the warm-up).

The loop updates the EMA once per optimiser step (after all accumulation
micro-steps and processes), with ``optimization_step`` = the global step
count, so a resumed run continues the same sequence.

Torch only; no Kedro.
"""

from __future__ import annotations

from typing import Any

import torch

from .lr_schedule import lr_at

__all__ = ["describe", "ema_decay_at", "ema_start_share", "ema_summary", "ema_update_", "lr_summary",
           "schedule_summary"]

WARMUPS = ("diffusers", "power", "none")


def ema_decay_at(
    optimization_step: int, decay: float, warmup: str = "diffusers", inv_gamma: float = 1.0, power: float = 2 / 3
) -> float:
    """The decay of the ``optimization_step``-th EMA update (counted from 1)."""
    if warmup not in WARMUPS:
        raise ValueError(f"ema_warmup must be one of {WARMUPS}, got {warmup!r}")
    if warmup == "none":
        return float(decay)
    step = max(0, optimization_step - 1)  # EMAModel: update_after_step = 0
    if step <= 0:
        return 0.0
    if warmup == "power":
        value = 1 - (1 + step / inv_gamma) ** -power
    else:
        value = (1 + step) / (10 + step)
    return max(min(value, float(decay)), 0.0)  # min_decay = 0


def ema_start_share(
    steps: int, decay: float, warmup: str = "diffusers", inv_gamma: float = 1.0, power: float = 2 / 3,
    first: int = 1,
) -> float:
    """``prod_{s=first}^{steps} decay_s``: with ``first=1`` the share of the
    starting weights left in the EMA after ``steps`` updates; with ``first=2``
    the share of the weights after the first update."""
    share = 1.0
    for s in range(first, steps + 1):
        d = ema_decay_at(s, decay, warmup, inv_gamma, power)
        if d >= decay:  # both warm-ups rise monotonically to the cap: the rest is decay ** n
            return share * float(decay) ** (steps + 1 - s)
        share *= d
        if share == 0.0:
            break
    return share


def ema_update_(ema_params: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * param`` in place (decay 0 copies)."""
    with torch.no_grad():
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def ema_summary(config: Any, steps: int) -> dict[str, Any] | None:
    """The EMA schedule of ``config`` (a TrainConfig) reached after ``steps``
    optimiser steps; None when the EMA is off."""
    if config.ema_decay <= 0:
        return None
    args = (config.ema_decay, config.ema_warmup, config.ema_inv_gamma, config.ema_power)
    out: dict[str, Any] = {"decay": config.ema_decay, "warmup": config.ema_warmup}
    if config.ema_warmup == "power":
        out.update(inv_gamma=config.ema_inv_gamma, power=config.ema_power)
    out.update(
        step=int(steps),
        decay_at_last_step=ema_decay_at(steps, *args) if steps > 0 else None,
        start_share=ema_start_share(steps, *args),
        first_update_share=ema_start_share(steps, *args, first=2) if steps > 0 else None,
    )
    return out


def lr_summary(config: Any, steps: int) -> dict[str, Any]:
    """The lr warm-up of ``config`` and the lr of step ``steps``."""
    return {"lr": config.lr, "warmup_steps": config.lr_warmup_steps,
            "lr_at_last_step": lr_at(steps, config.lr, config.lr_warmup_steps) if steps > 0 else None}


def schedule_summary(config: Any, steps: int) -> dict[str, Any]:
    """``{"ema": ema_summary(...), "lr": lr_summary(...)}`` after ``steps`` optimiser steps."""
    return {"ema": ema_summary(config, steps), "lr": lr_summary(config, steps)}


def _fmt_share(v: float) -> str:
    return "0" if v == 0 else f"{v:.2g}" if v < 0.01 else f"{v:.3f}"


def describe(summary: dict[str, Any] | None) -> str:
    """One line for a report, e.g. ``decay 0.995 with diffusers warm-up ...``."""
    if summary is None:
        return "off (the trained weights are evaluated)"
    if summary["warmup"] == "diffusers":
        form = "diffusers warm-up (min(decay, (1+s)/(10+s)), s = step - 1)"
    elif summary["warmup"] == "power":
        form = (f"power warm-up (min(decay, 1 - (1+s/{summary.get('inv_gamma')})^-{summary.get('power', 2 / 3):.3g}),"
                " s = step - 1)")
    else:
        form = "no warm-up (constant)"
    line = f"decay {summary['decay']} with {form}"
    if summary.get("decay_at_last_step") is not None:
        line += f"; at step {summary['step']} the decay is {summary['decay_at_last_step']:.4g}"
    line += f"; starting weights' share of the EMA: {_fmt_share(summary['start_share'])}"
    if summary["warmup"] != "none" and summary.get("first_update_share") is not None:
        line += f" (step 1's weights: {_fmt_share(summary['first_update_share'])})"
    return line
