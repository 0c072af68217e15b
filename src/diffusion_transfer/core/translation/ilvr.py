"""ILVR (Choi et al., 2021): iterative latent variable refinement.

After every reverse step, the low frequencies of x_{t-1} are replaced by those
of the reference noised to t-1 (ILVR Eq. 8, Algorithm 1):

    x_{t-1} <- x_{t-1} - phi_N(x_{t-1}) + phi_N(y_{t-1}),   y_{t-1} ~ q(y_{t-1} | y_0)

phi_N is the low-pass filter of :func:`~.common.low_pass` (downsampling
factor N, 16 in the paper at 256x256). Refinement runs while t-1 >= the
``until`` fraction of T (0: every step, the last one included, so x_0 has
exactly the reference's low frequencies), from x_T by default (t0 = 1).

Variants (:mod:`.variants`; each option is also its own parameter):

- ``paper`` (the default): Algorithm 1 as written: the reference noised to
  t-1 with one fixed noise per image, every step refined, the last included,
  and the block-mean filter (the paper's phi_N is "a linear low-pass
  filtering operation, a sequence of downsampling and upsampling").
- ``authors_code``: jychoi118/ilvr_adm's ``p_sample_loop_progressive``: the
  reference noised to the step's input time t with fresh noise at every step
  (``q_sample(ref_img, t, randn)``), no refinement on the last step
  (``if i > range_t``), and its ``Resizer`` (antialiased cubic) as phi_N.

Why ``paper`` is the default: the SDFT paper, whose Table 1 protocol the
translate stage reproduces, cites ILVR's method but gives no implementation
setting of its own; the ILVR paper's Algorithm 1 is the stated method, and it
is what this project ran before the variant existed, so the demo's numbers do
not move. With a learned-variance model, ancestral sampling uses its variance,
as ilvr_adm (guided-diffusion's ``p_sample``) does.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from diffusion_transfer.core.sampling.common import EpsFn, Progress, randn_like
from diffusion_transfer.core.schedule import NoiseSchedule
from diffusion_transfer.core.translation.common import Sampler, TranslationBatch, TranslatorParams, low_pass
from diffusion_transfer.core.translation.sdedit import sdedit
from diffusion_transfer.core.translation.variants import resolve_options


class ILVRParams(TranslatorParams):
    sampler: Literal["ddim", "ddpm"] = "ddpm"
    steps: int = Field(100, ge=1)
    eta: float = Field(0.0, ge=0)
    t0: float | None = Field(1.0, ge=0, le=1)
    factor: int = Field(16, ge=1)         # downsampling factor N of the low-pass filter
    until: float = Field(0.0, ge=0, le=1)  # refine while t >= until T
    #: paper (ILVR Algorithm 1) | authors_code (jychoi118/ilvr_adm); null: ``translation.variant``.
    #: Each option below, null: the variant's (:mod:`.variants`, docs/DEVIATIONS.md).
    variant: Literal["paper", "authors_code"] | None = None
    filter: Literal["block", "cubic", "linear"] | None = None   # low-pass phi_N; the released Resizer: cubic
    reference_step: Literal["t_prev", "t"] | None = None        # reference noised to t-1 (paper) or t (code)
    reference_noise: Literal["fixed", "fresh"] | None = None    # one noise per image (paper) or per step (code)
    refine_last: bool | None = None                              # refine the last step (paper) or not (code)


class ILVRRefinement:
    """The sampler's ``post_step``: low-frequency replacement towards the
    reference ``y0``, noised to t-1 (``reference_step="t_prev"``) or t
    (``"t"``), with the fixed ``noise`` (one draw per image,
    ``reference_noise="fixed"``) or a fresh draw from ``generator`` at every
    step (``"fresh"``). ``refine_last=False`` leaves the last step's x_0 alone."""

    def __init__(self, y0: torch.Tensor, schedule: NoiseSchedule, factor: int = 16, until: float = 0.0,
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None, *,
                 filter: str = "block", reference_step: str = "t_prev", reference_noise: str = "fixed",
                 refine_last: bool = True):
        if not 0.0 <= until <= 1.0:
            raise ValueError(f"ILVR's `until` is a fraction of T in [0, 1], got {until!r}")
        opts = resolve_options("ilvr", "paper", filter=filter, reference_step=reference_step,
                               reference_noise=reference_noise, refine_last=refine_last)
        low_pass(y0, factor, opts["filter"])  # validates the factor against the image size
        self.y0, self.schedule, self.factor = y0, schedule, factor
        self.filter, self.reference_step = opts["filter"], opts["reference_step"]
        self.reference_noise, self.refine_last = opts["reference_noise"], opts["refine_last"]
        self.generator = generator
        # 0-indexed: x_{t-1} at paper step t-1 = until T; -1 is the clean x_0 (refined too when until = 0)
        self.until_t = int(round(until * schedule.num_timesteps)) - 1
        self.noise = noise if noise is not None else torch.randn(y0.shape, generator=generator).to(y0)

    def reference_at(self, t: int) -> torch.Tensor:
        """y_t (t = -1: the clean reference), with this step's noise."""
        if t < 0:
            return self.y0
        noise = self.noise if self.reference_noise == "fixed" else randn_like(self.y0, self.generator)
        return self.schedule.q_sample(self.y0, torch.full((self.y0.shape[0],), t, dtype=torch.int64), noise)

    def __call__(self, state: dict) -> torch.Tensor:
        x_prev, t_prev = state["x_prev"], int(state["t_prev"])
        if t_prev < self.until_t or (t_prev < 0 and not self.refine_last):
            return x_prev
        y = self.reference_at(t_prev if self.reference_step == "t_prev" else int(state["t"]))
        return x_prev - low_pass(x_prev, self.factor, self.filter) + low_pass(y, self.factor, self.filter)


def ilvr(
    eps_fn: EpsFn,
    y0: torch.Tensor,
    schedule: NoiseSchedule,
    factor: int = 16,
    t0: float = 1.0,
    until: float = 0.0,
    noise: torch.Tensor | None = None,
    sampler: Sampler = "ddpm",
    steps: int = 100,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    *,
    variant: str = "paper",
    filter: str | None = None,
    reference_step: str | None = None,
    reference_noise: str | None = None,
    refine_last: bool | None = None,
) -> torch.Tensor:
    """Generate with the target model from the reference ``y0`` noised to t0
    (t0 = 1: essentially pure noise), refining low frequencies towards ``y0``.
    ``variant`` ("paper" | "authors_code") sets the options left None."""
    opts = resolve_options("ilvr", variant, filter=filter, reference_step=reference_step,
                           reference_noise=reference_noise, refine_last=refine_last)
    if noise is None:
        noise = torch.randn(y0.shape, generator=generator, dtype=y0.dtype).to(y0.device)
    refine = ILVRRefinement(y0, schedule, factor=factor, until=until, noise=noise, generator=generator, **opts)
    return sdedit(eps_fn, y0, schedule, t0=t0, noise=noise, sampler=sampler, steps=steps, eta=eta,
                  generator=generator, post_step=refine, progress=progress)


def translate_ilvr(p: ILVRParams, batch: TranslationBatch) -> torch.Tensor:
    """The translate stage's call: the block's settings, the resolved variant options."""
    return ilvr(batch.target_eps, batch.x, batch.schedule, factor=p.factor, t0=batch.t0, until=p.until,
                noise=batch.noise, sampler=p.sampler, steps=p.steps, eta=p.eta, generator=batch.generator,
                **batch.options)
