"""EGSDE (Zhao et al., 2022): SDEdit's ancestral sampling from t0 with an
energy that guides every step (EGSDE Eq. 6, VP form of appendix A.3).

With x_t^src = sqrt(abar_t) x_0^src + sqrt(1 - abar_t) z, z the start noise
(reused at every step, as the official code does), each reverse step from
y_t to y_s moves its mean by

    - (beta'_t / sqrt(alpha'_t)) [ lambda_s grad_y E_s(y_t, x_t^src, t)
                                   + lambda_i grad_y E_i(y_t, x_t^src) ]

    E_s = cos(f(y_t, t), f(x_t^src, t))     realism: the domain classifier's
          features (channel-wise cosine similarity, mean over positions);
          descending it pushes away from the source domain's features;
    E_i = || phi_N(y_t) - phi_N(x_t^src) ||^2   faithfulness: low-pass filter
          (factor N = 32 in the paper), summed over pixels.

beta'_t = 1 - abar_t / abar_s is the (respaced) step's beta. EGSDE's defaults:
lambda_s = 500, lambda_i = 2, N = 32, t0 = 0.5T. With both weights 0 this
is plain ancestral SDEdit.

Variants (:mod:`.variants`; each option is also its own parameter):

- ``paper`` (the default): EGSDE Eq. 6 on the project's ancestral sampler, as
  SDEdit and ILVR use it: the x_0 prediction clipped to [-1, 1] in the mean, a
  learned-variance model's own variance, and the block-mean low-pass filter
  (the paper specifies phi only as a low-pass filter, down- then upsampling).
- ``authors_code``: ML-GSAI/EGSDE's ``egsde_sample``: the unclipped mean
  (y - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) (``clip_x0: false``), the
  fixed posterior variance even for a learned-sigma ADM (``var_type:
  fixedsmall``; ``learned_variance: false``) and its ``Resizer`` with the
  linear kernel (``filter: linear``).

Why ``paper`` is the default: the SDFT paper, whose Table 1 protocol the
translate stage reproduces, gives EGSDE's hyperparameters (lambda_s, lambda_i,
N, t0) but no implementation setting; the equations are the stated method, and
``paper`` is what the project ran before the variant existed, so the demo's
numbers do not move. SDFT's appendix D trains EGSDE's classifier with EGSDE's
code, so ``authors_code`` may be the closer match to its Table 1 at paper
scale (docs/DEVIATIONS.md).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from diffusion_transfer.core.sampling.common import EpsFn, Progress, abar_at
from diffusion_transfer.core.schedule import NoiseSchedule
from diffusion_transfer.core.translation.common import FeatureFn, TranslationBatch, TranslatorParams, low_pass
from diffusion_transfer.core.translation.sdedit import sdedit
from diffusion_transfer.core.translation.variants import resolve_options


class EGSDEParams(TranslatorParams):
    steps: int = Field(100, ge=1)          # ancestral DDPM steps over [0, t0]
    t0: float | None = Field(None, ge=0, le=1)
    realism_weight: float = Field(500.0, ge=0)      # lambda_s (EGSDE)
    faithfulness_weight: float = Field(2.0, ge=0)   # lambda_i
    factor: int = Field(32, ge=1)                   # low-pass downsampling factor
    #: paper (EGSDE Eq. 6) | authors_code (ML-GSAI/EGSDE); null: ``translation.variant``.
    #: Each option below, null: the variant's (:mod:`.variants`, docs/DEVIATIONS.md).
    variant: Literal["paper", "authors_code"] | None = None
    filter: Literal["block", "cubic", "linear"] | None = None   # low-pass phi_N; the released Resizer: linear
    clip_x0: bool | None = None            # clip x_0 in the ancestral mean (paper) or not (code)
    learned_variance: bool | None = None   # a learned-variance model's variance (paper) or fixed (code)

    def ancestral(self) -> bool:
        return True  # :func:`egsde` always runs the ancestral sampler (EGSDE is an SDE method)

    def classifier_use(self) -> str | None:
        return "EGSDE's realism energy" if self.realism_weight else None


def feature_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image (B,): cosine similarity over channels at each position of two
    (B, C, H, W) feature maps, averaged over positions."""
    a, b = a.flatten(2), b.flatten(2)
    return (F.normalize(a, dim=1, eps=1e-10) * F.normalize(b, dim=1, eps=1e-10)).sum(dim=1).mean(dim=1)


class EGSDEGuidance:
    """The sampler's ``post_step``: subtracts the weighted energy gradient,
    evaluated at the current state y_t, from the next state."""

    def __init__(self, x0_src: torch.Tensor, schedule: NoiseSchedule, noise: torch.Tensor,
                 features: FeatureFn | None = None, realism_weight: float = 500.0,
                 faithfulness_weight: float = 2.0, factor: int = 32, filter: str = "block"):
        if realism_weight and features is None:
            raise ValueError("EGSDE's realism energy needs the domain classifier's features (or realism_weight 0)")
        self.filter = resolve_options("egsde", "paper", filter=filter)["filter"]
        low_pass(x0_src, factor, self.filter)  # validates the factor against the image size
        self.x0_src, self.schedule, self.noise = x0_src, schedule, noise
        self.features, self.factor = features, factor
        self.realism_weight, self.faithfulness_weight = float(realism_weight), float(faithfulness_weight)

    def source_at(self, t: int) -> torch.Tensor:
        tt = torch.full((self.x0_src.shape[0],), t, dtype=torch.int64)
        return self.schedule.q_sample(self.x0_src, tt, self.noise)

    def energy_grad(self, y: torch.Tensor, t: int) -> torch.Tensor:
        """lambda_s grad E_s + lambda_i grad E_i at y_t."""
        x_src = self.source_at(t)
        tt = torch.full((y.shape[0],), t, dtype=torch.int64, device=y.device)
        grad = torch.zeros_like(y)
        with torch.enable_grad():
            if self.realism_weight:
                with torch.no_grad():
                    f_src = self.features(x_src, tt)
                yy = y.detach().requires_grad_(True)
                energy = feature_cosine(self.features(yy, tt), f_src).sum()
                grad = grad + self.realism_weight * torch.autograd.grad(energy, yy)[0]
            if self.faithfulness_weight:
                yy = y.detach().requires_grad_(True)
                energy = (low_pass(yy, self.factor, self.filter)
                          - low_pass(x_src, self.factor, self.filter)).square().sum()
                grad = grad + self.faithfulness_weight * torch.autograd.grad(energy, yy)[0]
        return grad.detach()

    def __call__(self, state: dict) -> torch.Tensor:
        if not (self.realism_weight or self.faithfulness_weight):
            return state["x_prev"]
        t, t_prev = int(state["t"]), int(state["t_prev"])
        abar = self.schedule.alphas_cumprod
        beta = 1.0 - abar_at(abar, t) / abar_at(abar, t_prev)
        weight = beta / (1.0 - beta) ** 0.5
        return state["x_prev"] - weight * self.energy_grad(state["x"], t)


def egsde(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    features: FeatureFn | None = None,
    realism_weight: float = 500.0,
    faithfulness_weight: float = 2.0,
    factor: int = 32,
    t0: float = 0.5,
    noise: torch.Tensor | None = None,
    steps: int = 100,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    *,
    variant: str = "paper",
    filter: str | None = None,
    clip_x0: bool | None = None,
    learned_variance: bool | None = None,
) -> torch.Tensor:
    """Translate ``x0`` with the target model's ``eps_fn``, ancestral sampling
    from t0 under energy guidance. ``features(x_t, t)`` is the domain
    classifier's feature map (:meth:`DomainClassifier.features`). ``variant``
    ("paper" | "authors_code") sets the options left None."""
    opts = resolve_options("egsde", variant, filter=filter, clip_x0=clip_x0, learned_variance=learned_variance)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    guide = EGSDEGuidance(x0, schedule, noise, features, realism_weight, faithfulness_weight, factor,
                          filter=opts["filter"])
    return sdedit(eps_fn, x0, schedule, t0=t0, noise=noise, sampler="ddpm", steps=steps, generator=generator,
                  post_step=guide, progress=progress, clip_x0=opts["clip_x0"],
                  learned_variance=opts["learned_variance"])


def translate_egsde(p: EGSDEParams, batch: TranslationBatch) -> torch.Tensor:
    """The translate stage's call: the block's energy weights, the resolved variant options."""
    return egsde(batch.target_eps, batch.x, batch.schedule, features=batch.features,
                 realism_weight=p.realism_weight, faithfulness_weight=p.faithfulness_weight, factor=p.factor,
                 t0=batch.t0, noise=batch.noise, steps=p.steps, generator=batch.generator, **batch.options)
