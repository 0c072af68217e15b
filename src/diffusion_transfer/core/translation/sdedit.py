"""SDEdit (Meng et al., 2022): perturb the source image to t0 and denoise it
with the target model.

    x_{t0} = sqrt(abar_{t0}) x_0^src + sqrt(1 - abar_{t0}) z,   then reverse to x_0

t0 trades realism (large) for faithfulness (small); the SDFT paper uses 0.5T
for MetFaces and 0.625T for AAHQ (appendix D). DDIM or ancestral DDPM.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from diffusion_transfer.core.sampling.common import EpsFn, PostStep, Progress, check_image_batch
from diffusion_transfer.core.schedule import NoiseSchedule
from diffusion_transfer.core.translation.common import (
    Sampler,
    TranslationBatch,
    TranslatorParams,
    perturb,
    reverse,
    start_timestep,
)


class SDEditParams(TranslatorParams):
    sampler: Literal["ddim", "ddpm"] = "ddim"
    steps: int = Field(50, ge=1)
    eta: float = Field(0.0, ge=0)
    #: editing range as a fraction of T; null: ``translation.t0``
    t0: float | None = Field(None, ge=0, le=1)


def sdedit(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    t0: float = 0.5,
    noise: torch.Tensor | None = None,
    sampler: Sampler = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    post_step: PostStep | None = None,
    progress: Progress | None = None,
    clip_x0: bool = True,
    learned_variance: bool = True,
) -> torch.Tensor:
    """Translate ``x0`` (B, C, H, W) in [-1, 1]. ``noise`` is the start
    perturbation (drawn from ``generator`` when None). With t0 = 0 the input
    is returned unchanged. ``post_step`` is the sampler's plug-in point (EGSDE
    and ILVR use it); ``clip_x0`` and ``learned_variance`` go to the sampler
    (:func:`~.common.reverse`)."""
    check_image_batch(x0, "x0")
    t_start = start_timestep(schedule, t0)
    if t_start < 0:
        return x0.clone()
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x = perturb(x0, schedule, t_start, noise)
    return reverse(eps_fn, x, schedule, t_start, sampler=sampler, steps=steps, eta=eta, generator=generator,
                   post_step=post_step, progress=progress, clip_x0=clip_x0, learned_variance=learned_variance)


def translate_sdedit(p: SDEditParams, batch: TranslationBatch) -> torch.Tensor:
    """The translate stage's call: the block's sampler from the shared start noise."""
    return sdedit(batch.target_eps, batch.x, batch.schedule, t0=batch.t0, noise=batch.noise, sampler=p.sampler,
                  steps=p.steps, eta=p.eta, generator=batch.generator)
