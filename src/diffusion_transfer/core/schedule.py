"""Noise schedules, SNR, forward noising and loss weightings w(t).

Notation follows the papers: T steps, betas beta_t, alpha_t = 1 - beta_t,
abar_t = prod_{s<=t} alpha_s, SNR(t) = abar_t / (1 - abar_t). Timesteps are
0-indexed integers 0..T-1 (index t corresponds to the paper's t+1), as in
diffusers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete DDPM schedule. All tensors are float64 on the CPU; index with
    :meth:`at` to get float32 values broadcast to an image batch."""

    betas: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        return torch.cat([torch.ones(1, dtype=self.betas.dtype), self.alphas_cumprod[:-1]])

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = abar_t / (1 - abar_t), for integer timesteps t (any shape)."""
        abar = self.alphas_cumprod[t.long().cpu()]
        return (abar / (1.0 - abar)).to(torch.float32)

    def at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Gather ``values[t]`` and reshape to broadcast against ``like`` (B, C, H, W)."""
        out = values[t.long().cpu()].to(device=like.device, dtype=like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM Eq. 4)."""
        abar = self.at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        abar = self.at(self.alphas_cumprod, t, x_t)
        return (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()


def make_schedule(
    kind: str = "linear",
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> NoiseSchedule:
    """Linear (DDPM) or cosine (improved DDPM) betas."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if kind == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    elif kind == "cosine":
        s = 0.008

        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = torch.tensor(
            [
                min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), 0.999)
                for i in range(num_timesteps)
            ],
            dtype=torch.float64,
        )
    else:
        raise ValueError(f"schedule kind must be 'linear' or 'cosine', got {kind!r}")
    return NoiseSchedule(betas=betas)


# --- weightings w(t) -------------------------------------------------------
#
# Each returns a float32 tensor of per-sample weights for integer timesteps t.


def ddpm_weight(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """w_t = (1 - beta_t)(1 - abar_t) / beta_t, the factor Ho et al. found
    works well (SDFT paper, section 2.1); the P2 and SDFT weights multiply it."""
    idx = t.long().cpu()
    beta = schedule.betas[idx]
    abar = schedule.alphas_cumprod[idx]
    return ((1.0 - beta) * (1.0 - abar) / beta).to(torch.float32)


def constant_weight(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    return torch.ones(t.shape, dtype=torch.float32)


def p2_weight(schedule: NoiseSchedule, t: torch.Tensor, k: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """1 / (k + SNR(t))^gamma (P2 weighting, SDFT Eq. 2 and 4 without w_t).

    Computed in log space so that large gamma (50 for AAHQ) underflows to 0
    gracefully instead of producing inf/nan."""
    idx = t.long().cpu()
    abar = schedule.alphas_cumprod[idx]
    snr = abar / (1.0 - abar)
    return torch.exp(-gamma * torch.log(k + snr)).to(torch.float32)


def min_snr_weight(schedule: NoiseSchedule, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """min(SNR(t), gamma) (Min-SNR-gamma, Hang et al.; SDFT ablation)."""
    return torch.clamp(schedule.snr(t), max=gamma)
