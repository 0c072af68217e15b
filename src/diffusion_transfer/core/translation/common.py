"""Pieces shared by the translation methods: the editing start point, the
low-pass filter and the reverse process they all run; the base of their
parameter blocks and the batch the translate stage hands each of them.

Every translator starts from a clean source-domain image x_0^src in [-1, 1]
and returns an image of the target model's domain. The editing range ``t0``
is a fraction of T: the image is noised to timestep round(t0 T) - 1
(0-indexed, the paper's t = t0 T), so t0 = 0.5 is the SDFT paper's 0.5T and
t0 = 0 leaves the image untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from diffusion_transfer.core.sampling import sample_ddim, sample_ddpm
from diffusion_transfer.core.sampling.common import EpsFn, PostStep, Progress, check_image_batch
from diffusion_transfer.core.schedule import NoiseSchedule
from diffusion_transfer.core.translation.resizer import LOW_PASS_FILTERS, block_low_pass, resizer_low_pass

Sampler = Literal["ddim", "ddpm"]
#: the domain classifier's feature map f(x_t, t) (EGSDE's realism energy)
FeatureFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TranslatorParams(BaseModel):
    """A translator's block under ``translation`` (``translation.sdedit`` ...);
    an unknown key is an error, as in every parameter block."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True

    def ancestral(self) -> bool:
        """Samples with ancestral DDPM (the meta then says which variance it used)."""
        return getattr(self, "sampler", None) == "ddpm"

    def classifier_use(self) -> str | None:
        """What, if anything, needs the domain classifier's features."""
        return None


@dataclass(frozen=True)
class TranslationBatch:
    """One batch of source images and what a translator may use on it; each
    translator takes the parts it needs."""

    x: torch.Tensor                 # source images in [-1, 1], (B, C, H, W)
    noise: torch.Tensor             # the start noise of each image, shared by every translator
    schedule: NoiseSchedule
    target_eps: EpsFn               # the fine-tuned (target-domain) model
    source_eps: EpsFn               # the pretrained (source-domain) model
    generator: torch.Generator
    t0: float | None = None         # the editing range, resolved (``translation.t0`` where the block's is null)
    options: dict[str, Any] = field(default_factory=dict)  # ILVR's / EGSDE's resolved variant options
    features: FeatureFn | None = None


def start_timestep(schedule: NoiseSchedule, t0: float) -> int:
    """The 0-indexed timestep of editing range ``t0`` in [0, 1]; -1 for t0 = 0."""
    if not 0.0 <= float(t0) <= 1.0:
        raise ValueError(f"the editing range t0 is a fraction of T in [0, 1], got {t0!r}")
    return int(round(float(t0) * schedule.num_timesteps)) - 1


def perturb(x0: torch.Tensor, schedule: NoiseSchedule, t_start: int, noise: torch.Tensor) -> torch.Tensor:
    """x_{t_start} = sqrt(abar) x_0 + sqrt(1 - abar) noise (SDEdit's start point)."""
    t = torch.full((x0.shape[0],), t_start, dtype=torch.int64)
    return schedule.q_sample(x0, t, noise)


def low_pass(x: torch.Tensor, factor: int, kind: str = "block") -> torch.Tensor:
    """phi_N(x), the low-pass filter of ILVR and EGSDE (:mod:`.resizer`).
    ``kind="block"``: average over factor x factor blocks, then repeat each
    block mean (nearest upsampling); a projection, phi(phi(x)) = phi(x), so the
    ILVR replacement leaves exactly the reference's low frequencies.
    ``"cubic"`` / ``"linear"``: the released ILVR / EGSDE code's resizer."""
    check_image_batch(x)
    h, w = x.shape[-2:]
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"the low-pass downsampling factor must be a positive integer, got {factor!r}")
    if h % factor or w % factor:
        raise ValueError(f"the low-pass factor {factor} must divide the image size {h}x{w}")
    if kind not in LOW_PASS_FILTERS:
        raise ValueError(f"the low-pass filter must be one of {list(LOW_PASS_FILTERS)}, got {kind!r}")
    if factor == 1:
        return x
    if kind == "block":
        return block_low_pass(x, factor)
    return resizer_low_pass(x, factor, kind)


def reverse(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    t_start: int,
    sampler: Sampler = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    post_step: PostStep | None = None,
    progress: Progress | None = None,
    clip_x0: bool = True,
    learned_variance: bool = True,
) -> torch.Tensor:
    """Denoise x_{t_start} to x_0 with DDIM or ancestral DDPM over ``steps``
    evenly spaced timesteps of [0, t_start] (fewer if t_start is small).
    ``clip_x0`` clips the x_0 prediction to [-1, 1]; ``learned_variance``
    lets ancestral sampling use a learned-variance model's own variance."""
    steps = min(int(steps), t_start + 1)
    if sampler == "ddim":
        return sample_ddim(eps_fn, x, schedule, steps=steps, eta=eta, t_start=t_start, generator=generator,
                           post_step=post_step, progress=progress, clip_x0=clip_x0)
    if sampler == "ddpm":
        return sample_ddpm(eps_fn, x, schedule, steps=steps, t_start=t_start, generator=generator,
                           post_step=post_step, progress=progress, clip_x0=clip_x0,
                           learned_variance=learned_variance)
    raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
