"""The standard denoising loss (DDPM L_simple), used by ``naive`` (all
parameters fine-tuned from the source model) and ``scratch`` (same
architecture, random init).

    L_diff = E_{x0, t ~ U{0..T-1}, eps ~ N(0, I)} [ w(t) * mean_pixels (eps - eps_theta(x_t, t))^2 ]

with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps and w(t) = 1 ("constant",
the default) or a P2 / Min-SNR weighting. For a learned-variance model only the
eps half of the output is trained here.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.unet import predict_eps
from ..schedule import NoiseSchedule
from .base import WEIGHTINGS, check_choice, check_float, per_sample_mse, randn, sample_timesteps, timestep_weight

__all__ = ["DenoisingLoss"]


class DenoisingLoss:
    """eps-prediction MSE. Returns ``{"loss", "diffusion"}``."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        weighting: str = "constant",
        gamma: float = 1.0,
        k: float = 1.0,
        min_snr_gamma: float = 5.0,
    ) -> None:
        self.schedule = schedule
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
    ) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        t = sample_timesteps(b, self.schedule.num_timesteps, images, generator)
        noise = randn(tuple(images.shape), images, generator)
        x_t = self.schedule.q_sample(images, t, noise)
        eps = predict_eps(student, x_t, t)
        loss = (self.weight(t) * per_sample_mse(eps, noise)).mean()
        return {"loss": loss, "diffusion": loss.detach()}

    def __repr__(self) -> str:
        return f"DenoisingLoss(weighting={self.weighting!r}, gamma={self.gamma}, k={self.k})"

    @property
    def params(self) -> dict[str, Any]:
        return {"weighting": self.weighting, "gamma": self.gamma, "k": self.k, "min_snr_gamma": self.min_snr_gamma}
