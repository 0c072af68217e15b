"""DDIB (Su et al., 2023): dual diffusion implicit bridges.

The source model's deterministic DDIM inversion encodes the source image
into its latent x_T; the target model's DDIM (eta = 0) decodes that latent.
Both run over the same timestep grid, so with one model for both halves the
input comes back up to the discretisation error (SDFT appendix A reads the
same-noise samples of two models as this translation).
"""

from __future__ import annotations

import torch
from pydantic import Field

from diffusion_transfer.core.sampling import ddim_invert, sample_ddim
from diffusion_transfer.core.sampling.common import EpsFn, Progress
from diffusion_transfer.core.schedule import NoiseSchedule
from diffusion_transfer.core.translation.common import TranslationBatch, TranslatorParams


class DDIBParams(TranslatorParams):
    steps: int = Field(40, ge=1)           # DDIM steps of the inversion and of the generation


def ddib(
    source_eps_fn: EpsFn,
    target_eps_fn: EpsFn,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int = 40,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Translate ``x0`` (B, C, H, W) in [-1, 1]: invert with the source model,
    generate with the target model, ``steps`` DDIM steps each."""
    latent = ddim_invert(source_eps_fn, x0, schedule, steps=steps, progress=progress)
    return sample_ddim(target_eps_fn, latent, schedule, steps=steps, eta=0.0, progress=progress)


def translate_ddib(p: DDIBParams, batch: TranslationBatch) -> torch.Tensor:
    """The translate stage's call: the source model inverts, the target model generates."""
    return ddib(batch.source_eps, batch.target_eps, batch.x, batch.schedule, steps=p.steps)
