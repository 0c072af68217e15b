"""Noise schedules, SNR, forward noising, the training draws (t ~ U, eps ~ N)
and loss weightings w(t).

Notation follows the papers: T steps, betas beta_t, alpha_t = 1 - beta_t,
abar_t = prod_{s<=t} alpha_s, SNR(t) = abar_t / (1 - abar_t). Timesteps are
0-indexed integers 0..T-1 (index t corresponds to the paper's t+1), as in
diffusers.

The model's output parameterisation (diffusers' ``prediction_type``) lives on
the schedule: ``epsilon`` (the noise), ``v_prediction`` (v = sqrt(abar_t) eps -
sqrt(1 - abar_t) x_0, Salimans & Ho 2022) or ``sample`` (x_0 itself).
:meth:`NoiseSchedule.eps_from_output`, :meth:`~NoiseSchedule.x0_from_output`
and :meth:`~NoiseSchedule.training_target` convert between them (formulas of
diffusers' DDPM/DDIM schedulers); for ``epsilon`` they return their input
unchanged, so eps-only code paths stay bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: diffusers' ``beta_schedule`` names :func:`make_schedule` builds ("cosine" is an alias of the last).
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class UnsupportedScheduleError(ValueError):
    """A scheduler setting this code cannot honour; the message names the key,
    the value and what is supported."""

    def __init__(self, key: str, value: Any, supported: str) -> None:
        super().__init__(f"unsupported scheduler setting {key}={value!r}; supported: {supported}")
        self.key, self.value = key, value


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete DDPM schedule. All tensors are float64 on the CPU; index with
    :meth:`at` to get float32 values broadcast to an image batch."""

    betas: torch.Tensor
    prediction_type: str = "epsilon"
    beta_schedule: str = "linear"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise UnsupportedScheduleError("prediction_type", self.prediction_type, ", ".join(PREDICTION_TYPES))

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
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM Eq. 4), the
        coefficients formed in float64 (as guided-diffusion's are)."""
        a, s = self._coefs(t, x0)
        return a * x0 + s * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a, s = self._coefs(t, x_t)
        return (x_t - s * eps) / a

    # --- the model's parameterisation (prediction_type) ---------------------

    def _coefs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # sqrt(abar), sqrt(1 - abar) in float64 before the cast: 1 - abar in float32 loses
        # ~3 digits at small t (abar ~ 1), which sample / v conversions would amplify.
        abar = self.alphas_cumprod
        return self.at(abar.sqrt(), t, like), self.at((1.0 - abar).sqrt(), t, like)

    @staticmethod
    def _prediction(out: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        c = x_t.shape[1]
        return out[:, :c] if out.shape[1] == 2 * c else out  # drop a learned variance half

    def eps_from_output(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise prediction implied by the model output ``out`` at (x_t, t).
        epsilon: ``out``; v: sqrt(abar) v + sqrt(1-abar) x_t; sample: (x_t - sqrt(abar) x0) / sqrt(1-abar).
        A learned-variance output (2C channels) keeps its first C channels."""
        out = self._prediction(out, x_t)
        if self.prediction_type == "epsilon":
            return out
        a, s = self._coefs(t, out)
        if self.prediction_type == "v_prediction":
            return a * out + s * x_t
        return (x_t - a * out) / s

    def x0_from_output(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The x_0 prediction implied by ``out``. epsilon: (x_t - sqrt(1-abar) eps) / sqrt(abar);
        v: sqrt(abar) x_t - sqrt(1-abar) v; sample: ``out``."""
        out = self._prediction(out, x_t)
        if self.prediction_type == "sample":
            return out
        if self.prediction_type == "epsilon":
            return self.predict_x0(x_t, t, out)
        a, s = self._coefs(t, out)
        return a * x_t - s * out

    def output_from_eps(self, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model output whose :meth:`eps_from_output` at (x_t, t) is ``eps``
        (the inverse map). v: (eps - sqrt(1-abar) x_t) / sqrt(abar), i.e.
        sqrt(abar) eps - sqrt(1-abar) x0 with x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar);
        sample: that x0."""
        if self.prediction_type == "epsilon":
            return eps
        a, s = self._coefs(t, eps)
        if self.prediction_type == "v_prediction":
            return (eps - s * x_t) / a
        return (x_t - s * eps) / a

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model regresses for x_t = q_sample(x0, t, noise): epsilon: noise;
        v: sqrt(abar) noise - sqrt(1-abar) x0; sample: x0."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        a, s = self._coefs(t, x0)
        return a * noise - s * x0

    def describe(self) -> dict[str, Any]:
        """The settings for reports: beta_schedule, num_train_timesteps,
        beta_start / beta_end (None for the cosine schedule), prediction_type."""
        ends: list[float | None] = [float(f"{float(b):.12g}") for b in (self.betas[0], self.betas[-1])]
        if self.beta_schedule == "squaredcos_cap_v2":
            ends = [None, None]
        return {"beta_schedule": self.beta_schedule, "num_train_timesteps": self.num_timesteps,
                "beta_start": ends[0], "beta_end": ends[1], "prediction_type": self.prediction_type}

    def scheduler_config(self) -> dict[str, Any]:
        """The diffusers scheduler-config keys that rebuild this schedule
        (saved with a fine-tuned model, so it is sampled as it was trained)."""
        return {k: v for k, v in self.describe().items() if v is not None}


def make_schedule(
    kind: str = "linear",
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    prediction_type: str = "epsilon",
) -> NoiseSchedule:
    """Betas as diffusers builds them: ``linear`` (DDPM), ``scaled_linear``
    (linspace(sqrt(beta_start), sqrt(beta_end), T)^2) or ``squaredcos_cap_v2``
    (improved DDPM's cosine, betas capped at 0.999; alias ``cosine``)."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if kind == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    elif kind in ("cosine", "squaredcos_cap_v2"):
        kind = "squaredcos_cap_v2"
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
        raise UnsupportedScheduleError("kind (beta_schedule)", kind, ", ".join(BETA_SCHEDULES) + ", cosine")
    return NoiseSchedule(betas=betas, prediction_type=prediction_type, beta_schedule=kind)


# --- training draws: t ~ U{0, ..., T-1} and eps ~ N(0, I) -----------------
#
# Drawn on the generator's device, so that a seeded generator gives the same
# draws whatever device the images are on.


def _gen_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def randn(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, returned on
    ``like``'s device with ``like``'s dtype."""
    noise = torch.randn(shape, generator=generator, device=_gen_device(generator, like.device))
    return noise.to(device=like.device, dtype=like.dtype)


def sample_timesteps(
    n: int, num_timesteps: int, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """t ~ U{0, ..., T-1}, shape (n,), int64 on ``like``'s device."""
    t = torch.randint(0, num_timesteps, (n,), generator=generator, device=_gen_device(generator, like.device))
    return t.to(like.device)


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
    """min(SNR(t), gamma) on the squared error of the model's own output, as
    SDFT's ablation (Sec. 5) writes it: for an eps-model it puts the most
    weight on the low-noise timesteps."""
    return torch.clamp(schedule.snr(t), max=gamma)


def min_snr_x0_weight(schedule: NoiseSchedule, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """min(SNR(t), gamma) on the x_0 error, carried to the model's output:
    divided by SNR for eps and by SNR + 1 for v (the squared errors of eps and
    v are SNR and SNR + 1 times the x_0 error's). Min-SNR-gamma as Hang et al.
    define it (Sec. 3.4 and 4.2) and as diffusers' ``--snr_gamma`` computes it."""
    snr = schedule.snr(t)
    weight = torch.clamp(snr, max=gamma)
    if schedule.prediction_type == "epsilon":
        return weight / snr
    if schedule.prediction_type == "v_prediction":
        return weight / (snr + 1.0)
    return weight
