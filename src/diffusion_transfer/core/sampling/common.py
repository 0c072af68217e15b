"""Pieces shared by the samplers: the eps_fn contract, the model wrapper and
small helpers.

An ``eps_fn`` is any callable ``eps_fn(x, t) -> eps`` where ``x`` is a float
batch (B, C, H, W), ``t`` an int64 tensor of shape (B,) on ``x``'s device
holding 0-indexed timesteps, and ``eps`` the noise prediction shaped like
``x``. Guidance (classifier, energy, CFG) is added by wrapping an eps_fn,
never inside a sampler.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from diffusion_transfer.core.models.layout import keep_channels_last
from diffusion_transfer.core.schedule import NoiseSchedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]
PostStep = Callable[[dict[str, Any]], torch.Tensor]
Progress = Callable[[Iterable[Any]], Iterable[Any]]


def model_eps_fn(model: torch.nn.Module, schedule: NoiseSchedule, autocast_dtype: torch.dtype | None = None,
                 compile: bool = False, channels_last: bool = False) -> EpsFn:
    """Wrap a diffusers ``UNet2DModel`` (or any ``model(x, t)`` returning a
    tensor or an object with ``.sample``) as an eps_fn. The raw output is
    converted to eps with ``schedule.eps_from_output`` (its ``prediction_type``:
    epsilon, v_prediction or sample).

    Runs under ``torch.no_grad()``; with ``autocast_dtype`` (e.g.
    ``torch.bfloat16``) under ``torch.autocast`` on ``x``'s device type. For a
    learned-variance model (``out_channels == 2 * C``, e.g. 6 for RGB) only the
    eps half, the first C channels, is returned. The result has ``x``'s dtype.

    The returned eps_fn carries ``eps_fn.predictions(x, t) -> (eps, x0, v)``,
    one model call giving eps, the x_0 prediction formed from the output
    directly (None for an epsilon model: the samplers' own formula is the
    same) and the variance channels ``v`` (None for a C-channel model). The
    samplers use it: a v- or sample-prediction model's x_0 then never goes
    through eps and a division by sqrt(abar_t), tiny at large t (as
    diffusers' schedulers form it), and ancestral sampling uses a learned
    variance. ``eps_fn.eps_and_variance(x, t) -> (eps, v)`` is the same call
    without x_0. A wrapper around eps_fn (guidance) drops both attributes:
    the samplers then derive x_0 from eps and use the fixed variance.

    ``compile`` calls the model through ``torch.compile`` (inductor; issue 35):
    compiled on the first call of each batch shape, ``model`` itself unchanged.
    ``channels_last`` puts ``model``'s 4-D weights in channels-last layout, in
    place (faster oneDNN / cuDNN convolutions; the same values), keeps the
    activations channels-last through diffusers' upsampling on a CPU
    (``core/models/layout.py``; bit for bit the same outputs), and hands the
    outputs back contiguous.
    """

    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"model_eps_fn(model, schedule, autocast_dtype=None): schedule must be a NoiseSchedule, "
                        f"got {type(schedule).__name__}")
    if channels_last:
        model.to(memory_format=torch.channels_last)
        keep_channels_last(model)
    net = torch.compile(model) if compile else model

    def predictions(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        ctx = (
            torch.autocast(device_type=x.device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.no_grad(), ctx:
            out = net(x, t.to(x.device))
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        c = x.shape[1]
        v = None
        if out.shape[1] == 2 * c:
            out, v = out[:, :c], out[:, c:].to(x.dtype)
        out = out.to(x.dtype).contiguous()  # a channels-last model's output, in the layout of x
        x0 = schedule.x0_from_output(out, x, t) if schedule.prediction_type != "epsilon" else None
        return schedule.eps_from_output(out, x, t), x0, v

    def eps_and_variance(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        eps, _, v = predictions(x, t)
        return eps, v

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return predictions(x, t)[0]

    eps_fn.predictions = predictions  # type: ignore[attr-defined]  # read by the samplers
    eps_fn.eps_and_variance = eps_and_variance  # type: ignore[attr-defined]
    return eps_fn


def call_predictions(eps_fn: EpsFn, x: torch.Tensor, t: int, variance: bool = False,
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(eps, x0, v)`` at timestep ``t``: from ``eps_fn.predictions`` where it
    has them (:func:`model_eps_fn`), else ``(eps_fn(x, t), None, None)``; ``v``
    only with ``variance``. x0 is None where the sampler derives it from eps."""
    tt = torch.full((x.shape[0],), int(t), dtype=torch.int64, device=x.device)
    predictions = getattr(eps_fn, "predictions", None)
    if predictions is None:
        return check_eps(eps_fn(x, tt), x), None, None
    eps, x0, v = predictions(x, tt)
    return check_eps(eps, x), x0, (v if variance else None)


def call_eps(eps_fn: EpsFn, x: torch.Tensor, t: int) -> torch.Tensor:
    """``eps_fn(x, full((B,), t))`` with a clear error on a wrongly shaped result."""
    tt = torch.full((x.shape[0],), int(t), dtype=torch.int64, device=x.device)
    return check_eps(eps_fn(x, tt), x)


def check_eps(eps: Any, x: torch.Tensor) -> torch.Tensor:
    """``eps`` if it is a tensor shaped like ``x``, else a clear error."""
    if not isinstance(eps, torch.Tensor) or eps.shape != x.shape:
        got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise ValueError(
            f"eps_fn must return a tensor shaped like x {tuple(x.shape)}, got {got} "
            "(wrap a learned-variance model with model_eps_fn to drop its variance channels)"
        )
    return eps


def abar_at(alphas_cumprod: torch.Tensor, t: int) -> float:
    """abar_t as a Python float (float64 precision); abar_{-1} = 1 (clean data)."""
    return 1.0 if t < 0 else float(alphas_cumprod[t])


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def check_image_batch(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        desc = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float tensor (B, C, H, W), got {desc}")


def wrap_progress(iterable: Iterable[Any], progress: Progress | None) -> Iterable[Any]:
    return progress(iterable) if progress is not None else iterable


def sqrt(v: float) -> float:
    return math.sqrt(max(v, 0.0))
