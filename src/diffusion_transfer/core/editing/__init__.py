"""Text-guided editing in a diffusion model's h-space (Asyrp, Kwon et al. 2023)."""

from diffusion_transfer.core.editing.asyrp import (
    ImplicitFunction,
    edit,
    edit_many,
    edit_timesteps,
    generate,
    invert,
    model_eps,
    timestep_at,
)
from diffusion_transfer.core.editing.hspace import HSpace, find_unet
from diffusion_transfer.core.editing.losses import (
    asyrp_loss,
    clip_objective,
    directional_loss,
    text_direction,
    text_similarity,
)
from diffusion_transfer.core.editing.train import AsyrpConfig, AsyrpResult, invert_images, train_asyrp

__all__ = [
    "AsyrpConfig", "AsyrpResult", "HSpace", "ImplicitFunction", "asyrp_loss", "clip_objective",
    "directional_loss", "edit", "edit_many", "edit_timesteps", "find_unet", "generate", "invert", "invert_images",
    "model_eps", "text_direction", "text_similarity", "timestep_at", "train_asyrp",
]
