"""ILVR (Choi et al., 2021): iterative latent variable refinement.

After every reverse step, the low frequencies of x_{t-1} are replaced by those
of the reference noised to t-1 (ILVR Eq. 8, Algorithm 1):

    x_{t-1} <- x_{t-1} - phi_N(x_{t-1}) + phi_N(y_{t-1}),   y_{t-1} ~ q(y_{t-1} | y_0)

phi_N is the low-pass filter of :func:`~.common.low_pass` (downsampling
factor N, 16 in the paper at 256x256). Refinement runs while t-1 >= the
``until`` fraction of T (0: every step, the last one included, so x_0 has
exactly the reference's low frequencies), from x_T by default (t0 = 1).
"""

from __future__ import annotations

import torch

from diffusion_transfer.core.sampling.common import EpsFn, Progress
from diffusion_transfer.core.schedule import NoiseSchedule
from diffusion_transfer.core.translation.common import Sampler, low_pass
from diffusion_transfer.core.translation.sdedit import sdedit


class ILVRRefinement:
    """The sampler's ``post_step``: low-frequency replacement towards the
    reference ``y0`` noised with the fixed ``noise`` (one draw per image)."""

    def __init__(self, y0: torch.Tensor, schedule: NoiseSchedule, factor: int = 16, until: float = 0.0,
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None):
        if not 0.0 <= until <= 1.0:
            raise ValueError(f"ILVR's `until` is a fraction of T in [0, 1], got {until!r}")
        low_pass(y0, factor)  # validates the factor against the image size
        self.y0, self.schedule, self.factor = y0, schedule, factor
        # 0-indexed: x_{t-1} at paper step t-1 = until T; -1 is the clean x_0 (refined too when until = 0)
        self.until_t = int(round(until * schedule.num_timesteps)) - 1
        self.noise = noise if noise is not None else torch.randn(y0.shape, generator=generator).to(y0)

    def reference_at(self, t: int) -> torch.Tensor:
        """y_t (t = -1: the clean reference)."""
        if t < 0:
            return self.y0
        return self.schedule.q_sample(self.y0, torch.full((self.y0.shape[0],), t, dtype=torch.int64), self.noise)

    def __call__(self, state: dict) -> torch.Tensor:
        x_prev, t_prev = state["x_prev"], int(state["t_prev"])
        if t_prev < self.until_t:
            return x_prev
        y_prev = self.reference_at(t_prev)
        return x_prev - low_pass(x_prev, self.factor) + low_pass(y_prev, self.factor)


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
) -> torch.Tensor:
    """Generate with the target model from the reference ``y0`` noised to t0
    (t0 = 1: essentially pure noise), refining low frequencies towards ``y0``."""
    if noise is None:
        noise = torch.randn(y0.shape, generator=generator, dtype=y0.dtype).to(y0.device)
    refine = ILVRRefinement(y0, schedule, factor=factor, until=until, noise=noise)
    return sdedit(eps_fn, y0, schedule, t0=t0, noise=noise, sampler=sampler, steps=steps, eta=eta,
                  generator=generator, post_step=refine, progress=progress)
