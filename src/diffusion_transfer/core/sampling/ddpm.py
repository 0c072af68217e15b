"""Ancestral DDPM sampling (Ho et al., 2020) with improved-DDPM respacing
(Nichol & Dhariwal, 2021, section 4).

Respacing keeps a subsequence S of timesteps (evenly spaced, see
:func:`ddim_timesteps`) and recomputes betas from the kept abar values,
beta'_k = 1 - abar_{s_k} / abar_{s_{k-1}}, so the respaced chain has the same
marginals q(x_t | x_0) at the kept steps. Each step samples the posterior
q(x_{s_{k-1}} | x_{s_k}, x0_hat):

    mean = beta'_k sqrt(abar_prev) / (1 - abar_t) * x0_hat
           + (1 - abar_prev) sqrt(1 - beta'_k) / (1 - abar_t) * x_t
    var  = beta-tilde = beta'_k (1 - abar_prev) / (1 - abar_t)

(DDPM Eq. 6-7). The model is always called with the original timestep s_k.

Learned variance (improved DDPM section 3.1, guided-diffusion's
``LEARNED_RANGE``): when the eps_fn comes from :func:`model_eps_fn` on a
model with 2C output channels, the extra channels v set the step's variance
by interpolating in log space between the respaced step's beta-tilde and beta':

    log var = frac log beta'_k + (1 - frac) log beta-tilde,   frac = (v + 1) / 2

(per pixel), as guided-diffusion's ``p_mean_variance`` does on its respaced
chain. Otherwise, or with ``learned_variance=False``, the variance is the fixed
beta-tilde. The mean is the same in both cases.
"""

from __future__ import annotations

import math

import torch

from diffusion_transfer.core.schedule import NoiseSchedule
from diffusion_transfer.core.sampling.common import (
    Callback,
    EpsFn,
    PostStep,
    Progress,
    abar_at,
    call_predictions,
    check_image_batch,
    randn_like,
    sqrt,
    wrap_progress,
)
from diffusion_transfer.core.sampling.ddim import ddim_timesteps


def sample_ddpm(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int | None = None,
    t_start: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    *,
    clip_x0: bool = True,
    progress: Progress | None = None,
    post_step: PostStep | None = None,
    learned_variance: bool = True,
) -> torch.Tensor:
    """Ancestral sampling from ``x`` (x_T, or x_{t_start} for a partial reverse
    process) down to x_0 with the posterior variance beta-tilde, or a
    learned-variance model's own variance (see the module docstring).

    ``steps=None`` keeps every timestep in [0, t_start] (no respacing);
    otherwise ``steps`` evenly spaced timesteps are kept and betas are
    recomputed for them. Noise comes from ``generator``; the last step adds
    none. ``clip_x0`` clips the x_0 prediction to [-1, 1] before forming the
    posterior mean. ``callback`` and ``post_step`` receive the same dicts as in
    :func:`sample_ddim` (``sigma`` is the step's standard deviation: a float
    for the fixed variance, a tensor shaped like ``x`` for a learned one).
    ``learned_variance`` uses a learned-variance model's own variance when
    ``eps_fn`` offers it (``eps_fn.predictions``, see :func:`model_eps_fn`).
    """
    check_image_batch(x)
    if steps is None:  # every timestep from t_start down to 0
        ts = ddim_timesteps(schedule.num_timesteps, 1, t_start)
        steps = ts[0] + 1
    ts = ddim_timesteps(schedule.num_timesteps, steps, t_start)
    abar = schedule.alphas_cumprod
    for i in wrap_progress(range(len(ts)), progress):
        t = ts[i]
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        a_t, a_prev = abar_at(abar, t), abar_at(abar, t_prev)
        beta = 1.0 - a_t / a_prev  # respaced beta'_k
        eps, x0_pred, v = call_predictions(eps_fn, x, t, variance=learned_variance)
        if x0_pred is None:  # an eps model or a wrapped eps_fn: x_0 from eps
            x0_pred = (x - sqrt(1.0 - a_t) * eps) / sqrt(a_t)
        if clip_x0:
            x0_pred = x0_pred.clamp(-1.0, 1.0)
        coef_x0 = beta * sqrt(a_prev) / (1.0 - a_t)
        coef_xt = (1.0 - a_prev) * sqrt(1.0 - beta) / (1.0 - a_t)
        x_prev = coef_x0 * x0_pred + coef_xt * x
        if v is not None and t_prev >= 0:  # learned variance (the last step adds no noise)
            sigma = learned_sigma(v, beta, a_t, a_prev)
            x_prev = x_prev + sigma * randn_like(x, generator)
        else:
            sigma = sqrt(beta * (1.0 - a_prev) / (1.0 - a_t))
            if t_prev >= 0 and sigma > 0.0:
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


def learned_sigma(v: torch.Tensor, beta: float, a_t: float, a_prev: float) -> torch.Tensor:
    """The standard deviation of one respaced step from the variance channels
    ``v``: exp(0.5 (frac log beta' + (1 - frac) log beta-tilde)), frac = (v + 1) / 2,
    beta-tilde = beta' (1 - abar_prev) / (1 - abar_t). Needs abar_prev < 1 (not the last step)."""
    max_log = math.log(beta)
    min_log = math.log(beta * (1.0 - a_prev) / (1.0 - a_t))
    frac = (v + 1.0) / 2.0
    return torch.exp(0.5 * (frac * max_log + (1.0 - frac) * min_log))
