"""Samplers as pure functions with a callback (k-diffusion style).

``eps_fn(x, t) -> eps`` is the only model interface; see :mod:`.common`.
"""

from diffusion_transfer.core.sampling.common import EpsFn, model_eps_fn
from diffusion_transfer.core.sampling.ddim import ddim_invert, ddim_timesteps, sample_ddim
from diffusion_transfer.core.sampling.ddpm import sample_ddpm
from diffusion_transfer.core.sampling.noise import iter_batches, make_noise_bank

__all__ = [
    "EpsFn",
    "ddim_invert",
    "ddim_timesteps",
    "iter_batches",
    "make_noise_bank",
    "model_eps_fn",
    "sample_ddim",
    "sample_ddpm",
]
