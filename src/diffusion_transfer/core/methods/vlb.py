"""The variational bound term of improved DDPM (Nichol & Dhariwal 2021), which
trains the variance half of a learned-variance (6-channel) model.

    L_hybrid = L_simple + lambda * L_vlb            (A3FT Eq. 11, lambda = 0.001)

The model outputs [eps, v] with v in [-1, 1] (roughly) and the reverse-process
variance interpolates in log space between beta_t and the posterior variance
beta~_t:

    log Sigma_theta = frac * log beta_t + (1 - frac) * log beta~_t,  frac = (v + 1) / 2

L_vlb is, per sample, KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) for
t > 0 and the discretised-Gaussian decoder NLL -log p_theta(x_0 | x_1) at
t = 0, in bits per dimension. As in improved DDPM, the mean uses a *detached*
eps, so L_vlb trains the variance only and L_simple alone trains eps. The x_0
prediction inside that mean is NOT clipped to [-1, 1]: guided-diffusion's
``training_losses`` calls ``_vb_terms_bpd(..., clip_denoised=False)`` (clipping
belongs to sampling only).

L_vlb is the sum of the T terms; a loss that samples one t uniformly
estimates it as T * L_t, so lambda L_vlb enters the loss as lambda T L_t
(:func:`vlb_term_weight`; improved DDPM's ``vb * num_timesteps / 1000``, i.e.
1 * L_t at T = 1000).
"""

from __future__ import annotations

import math

import torch

from ..schedule import NoiseSchedule

__all__ = ["VLB_WEIGHT", "variance_vlb", "reverse_log_variance", "vlb_term_weight"]

VLB_WEIGHT = 0.001  # improved DDPM's lambda (A3FT Eq. 11)


def vlb_term_weight(schedule: NoiseSchedule, vlb_weight: float) -> float:
    """The weight of one uniformly sampled term L_t in lambda * L_vlb:
    L_vlb = sum_t L_t = T E_t[L_t], so the weight is lambda * T."""
    return vlb_weight * schedule.num_timesteps


def _posterior(schedule: NoiseSchedule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    betas = schedule.betas
    abar = schedule.alphas_cumprod
    abar_prev = schedule.alphas_cumprod_prev
    var = betas * (1.0 - abar_prev) / (1.0 - abar)
    # log beta~_0 = log 0: clip with beta~_1, as improved DDPM does.
    log_var = torch.log(torch.cat([var[1:2], var[1:]]))
    coef_x0 = betas * abar_prev.sqrt() / (1.0 - abar)
    coef_xt = (1.0 - abar_prev) * schedule.alphas.sqrt() / (1.0 - abar)
    return var, log_var, coef_x0, coef_xt


def reverse_log_variance(schedule: NoiseSchedule, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log Sigma_theta(x_t, t) from the model's variance channels ``v``."""
    _, log_var, _, _ = _posterior(schedule)
    min_log = schedule.at(log_var, t, v)
    max_log = schedule.at(torch.log(schedule.betas), t, v)
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def _normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log-likelihood of images ``x`` in [-1, 1] quantised to 256 bins."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


def variance_vlb(
    schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Per-sample L_vlb in bits/dim, shape (B,). ``eps`` is detached here so
    only ``v`` (the variance channels) receives a gradient."""
    x0, x_t, eps, v = x0.float(), x_t.float(), eps.detach().float(), v.float()
    _, log_var, coef_x0, coef_xt = _posterior(schedule)
    true_mean = schedule.at(coef_x0, t, x_t) * x0 + schedule.at(coef_xt, t, x_t) * x_t
    true_log_var = schedule.at(log_var, t, x_t)
    pred_x0 = schedule.predict_x0(x_t, t, eps)  # unclipped, as guided-diffusion trains it
    model_mean = schedule.at(coef_x0, t, x_t) * pred_x0 + schedule.at(coef_xt, t, x_t) * x_t
    model_log_var = reverse_log_variance(schedule, v, t)
    kl = _normal_kl(true_mean, true_log_var, model_mean, model_log_var).flatten(1).mean(1) / math.log(2.0)
    nll = -_discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1) / math.log(2.0)
    return torch.where(t.to(kl.device) == 0, nll, kl)
