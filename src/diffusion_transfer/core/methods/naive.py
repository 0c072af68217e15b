"""The standard denoising loss (DDPM L_simple), used by ``naive`` (all
parameters fine-tuned from the source model) and ``scratch`` (same
architecture, random init).

    L_diff = E_{x0, t ~ U{0..T-1}, eps ~ N(0, I)} [ w(t) * mean_pixels (eps - eps_theta(x_t, t))^2 ]

with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps and w(t) = 1 ("constant",
the default) or a P2 / Min-SNR weighting. A model with another
``schedule.prediction_type`` regresses its native target instead of eps
(v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0, or x0; ``training_target``); the
weightings are applied unchanged. For a learned-variance model
(6 output channels) the hybrid loss of improved DDPM is used,
L_simple + vlb_weight * L_vlb (see ``vlb.py``; one sampled term stands for
the sum over T): L_vlb trains the variance half.

``attn``, ``a3ft``, ``anl`` and ``anl_uncond`` train with this same loss on
their adapted models; for ANL each image comes with its CLIP embedding as
``condition`` (Eq. 7/10).
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.unet import model_output
from ..schedule import NoiseSchedule, randn, sample_timesteps
from .base import WEIGHTINGS, check_choice, check_float, per_sample_mse, timestep_weight
from .vlb import VLB_WEIGHT, variance_vlb, vlb_term_weight

__all__ = ["DenoisingLoss"]


class DenoisingLoss:
    """Denoising MSE in the model's parameterisation. Returns ``{"loss", "diffusion"}`` (plus ``"vlb"``
    for a learned-variance model)."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        weighting: str = "constant",
        gamma: float = 1.0,
        k: float = 1.0,
        min_snr_gamma: float = 5.0,
        vlb_weight: float = VLB_WEIGHT,
    ) -> None:
        self.schedule = schedule
        self.vlb_weight = check_float("vlb_weight", vlb_weight)
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        self.gamma = check_float("gamma", gamma)
        self.k = check_float("k", k)
        self.min_snr_gamma = check_float("min_snr_gamma", min_snr_gamma)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_weight(
            self.schedule, t, self.weighting, gamma=self.gamma, k=self.k, min_snr_gamma=self.min_snr_gamma
        )

    def __call__(
        self,
        student: torch.nn.Module,
        images: torch.Tensor,
        teacher: torch.nn.Module | None = None,
        generator: torch.Generator | None = None,
        condition: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        b, c = images.shape[:2]
        t = sample_timesteps(b, self.schedule.num_timesteps, images, generator)
        noise = randn(tuple(images.shape), images, generator)
        x_t = self.schedule.q_sample(images, t, noise)
        out = model_output(student, x_t, t, condition)
        pred = out[:, :c]  # the native prediction (eps, v or x0)
        target = self.schedule.training_target(images, noise, t)
        loss = (self.weight(t) * per_sample_mse(pred, target)).mean()
        terms = {"diffusion": loss.detach()}
        if out.shape[1] == 2 * c:  # learned variance: hybrid loss
            eps = self.schedule.eps_from_output(pred, x_t, t)
            vlb = variance_vlb(self.schedule, images, x_t, t, eps, out[:, c:]).mean()
            loss = loss + vlb_term_weight(self.schedule, self.vlb_weight) * vlb
            terms["vlb"] = vlb.detach()
        return {"loss": loss, **terms}

    def __repr__(self) -> str:
        return f"DenoisingLoss(weighting={self.weighting!r}, gamma={self.gamma}, k={self.k})"

    @property
    def params(self) -> dict[str, Any]:
        return {"weighting": self.weighting, "gamma": self.gamma, "k": self.k, "min_snr_gamma": self.min_snr_gamma,
                "vlb_weight": self.vlb_weight}
