"""DDIM sampling and deterministic DDIM inversion (Song et al., 2021).

Pure functions in the style of k-diffusion: the loop is explicit, progress
reporting is optional (``progress=tqdm``), and ``callback`` sees every step.

With abar_t the cumulative product of alphas, a DDIM step from t to s < t is

    x0_hat  = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    sigma   = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)
    x_s     = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps + sigma z

(Song et al. Eq. 12 and 16); eta = 0 is the deterministic DDIM, eta = 1 the
DDPM posterior variance. The last step goes to s = -1 with abar_{-1} = 1, so
the sampler returns x0_hat of its last step.
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion_transfer.core.schedule import NoiseSchedule
from diffusion_transfer.core.sampling.common import (
    Callback,
    EpsFn,
    PostStep,
    Progress,
    abar_at,
    call_eps,
    call_predictions,
    check_image_batch,
    randn_like,
    sqrt,
    wrap_progress,
)


def ddim_timesteps(num_timesteps: int, steps: int, t_start: int | None = None) -> list[int]:
    """``steps`` timesteps evenly spaced over [0, t_start], descending, rounded.

    The first is ``t_start`` (default ``num_timesteps - 1``, the full reverse
    process; a smaller value gives the partial reverse process from T' < T
    used by SDEdit), the last is 0. Spacing is ``linspace(t_start, 0, steps)``
    rounded (improved-DDPM respacing with evenly spaced kept steps), so every
    timestep is distinct.
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    if t_start is None:
        t_start = num_timesteps - 1
    if isinstance(t_start, bool) or not isinstance(t_start, (int, np.integer)):
        raise ValueError(f"t_start must be an integer timestep, got {t_start!r}")
    t_start = int(t_start)
    if not 0 <= t_start <= num_timesteps - 1:
        raise ValueError(f"t_start must be in [0, {num_timesteps - 1}], got {t_start}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    steps = int(steps)
    if steps > t_start + 1:
        raise ValueError(
            f"steps must be at most t_start + 1 = {t_start + 1} (one model call per distinct "
            f"timestep in [0, {t_start}]), got {steps}"
        )
    if steps == 1:
        return [t_start]
    ts = np.round(np.linspace(t_start, 0, steps)).astype(np.int64)
    return [int(t) for t in ts]


def sample_ddim(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int = 40,
    eta: float = 0.0,
    t_start: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    *,
    clip_x0: bool = True,
    progress: Progress | None = None,
    post_step: PostStep | None = None,
) -> torch.Tensor:
    """Run the DDIM reverse process from ``x`` and return the sample x_0.

    ``x`` is x_T for the full process, or x_{t_start} for a partial reverse
    process (e.g. ``schedule.q_sample(x0, t_start, noise)`` for SDEdit).
    ``eta = 0`` is deterministic; ``eta > 0`` draws noise from ``generator``.
    With ``clip_x0`` the x_0 prediction is clipped to [-1, 1] and eps is
    recomputed from the clipped x_0 (as guided-diffusion does), keeping the
    update consistent.

    ``callback(dict(i, t, x, x0_pred))`` is called once per step with the state
    ``x`` at timestep ``t`` (before the update) and the step's x_0 prediction.
    ``post_step(dict(i, t, t_prev, x, x_prev, x0_pred, eps, sigma))`` may
    return a replacement for ``x_prev`` (the next state, at ``t_prev``; -1 after
    the last step): the plug-in point for ILVR-style low-pass replacement or
    energy guidance, which live in their own modules.
    """
    check_image_batch(x)
    if not eta >= 0.0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    ts = ddim_timesteps(schedule.num_timesteps, steps, t_start)
    abar = schedule.alphas_cumprod
    for i in wrap_progress(range(len(ts)), progress):
        t = ts[i]
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        a_t, a_prev = abar_at(abar, t), abar_at(abar, t_prev)
        eps, x0_pred, _ = call_predictions(eps_fn, x, t)
        if x0_pred is None:  # an eps model or a wrapped eps_fn: x_0 from eps
            x0_pred = (x - sqrt(1.0 - a_t) * eps) / sqrt(a_t)
        if clip_x0:
            x0_pred = x0_pred.clamp(-1.0, 1.0)
            eps = (x - sqrt(a_t) * x0_pred) / sqrt(1.0 - a_t)
        sigma = eta * sqrt((1.0 - a_prev) / (1.0 - a_t)) * sqrt(1.0 - a_t / a_prev)
        x_prev = sqrt(a_prev) * x0_pred + sqrt(1.0 - a_prev - sigma**2) * eps
        if sigma > 0.0:
            x_prev = x_prev + sigma * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0_pred": x0_pred})
        if post_step is not None:
            x_prev = post_step(
                {"i": i, "t": t, "t_prev": t_prev, "x": x, "x_prev": x_prev,
                 "x0_pred": x0_pred, "eps": eps, "sigma": sigma}
            )
        x = x_prev
    return x


def ddim_invert(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int = 40,
    t_end: int | None = None,
    callback: Callback | None = None,
    *,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion: encode clean images ``x0`` into x_{t_end}.

    Runs the eta = 0 DDIM update forward in time over the same timestep grid
    that :func:`sample_ddim` uses with ``t_start=t_end`` and the same ``steps``
    (default ``t_end = T - 1``), so ``sample_ddim(eps_fn, ddim_invert(...))``
    reconstructs ``x0`` up to the discretisation error (DDIB, Su et al.).

    Each step from t to s > t evaluates eps at the current state x_t with the
    timestep label s (the convention of diffusers' ``DDIMInverseScheduler``
    and null-text inversion): the sampler's step from s back to t uses
    eps(x_s, s), so this is the first-order approximation of its exact
    inverse, eps(x_s, s) ~ eps(x_t, s). It reconstructs about twice as
    accurately as evaluating at label t. The first step starts from the clean
    image (abar = 1). The x_0 prediction is not clipped (clipping would break
    invertibility).

    ``callback(dict(i, t, x, x0_pred))`` is called once per step with the
    state ``x`` before the step, ``t`` the timestep the step moves to.
    """
    check_image_batch(x0, "x0")
    ts = list(reversed(ddim_timesteps(schedule.num_timesteps, steps, t_end)))
    abar = schedule.alphas_cumprod
    x = x0
    t_cur = -1
    for i in wrap_progress(range(len(ts)), progress):
        t_next = ts[i]
        a_cur, a_next = abar_at(abar, t_cur), abar_at(abar, t_next)
        eps = call_eps(eps_fn, x, t_next)
        x0_pred = (x - sqrt(1.0 - a_cur) * eps) / sqrt(a_cur)
        x_next = sqrt(a_next) * x0_pred + sqrt(1.0 - a_next) * eps
        if callback is not None:
            callback({"i": i, "t": t_next, "x": x, "x0_pred": x0_pred})
        x = x_next
        t_cur = t_next
    return x
