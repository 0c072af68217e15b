"""Sampling a text-to-image model the way ``StableDiffusionPipeline.__call__``
does: the model's own diffusers scheduler (its ``scheduler/`` folder's class
and config), classifier-free guidance with a negative prompt, and the
latents decoded by the model's autoencoder.

For the same initial latents, prompts, scale and steps, :func:`sample_text_to_image`
gives the pipeline's images (``tests/core/test_text_to_image.py`` checks it
against ``StableDiffusionPipeline(..., latents=...)``); it runs without the
pipeline's safety checker and with the hidden states already encoded.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..models.latent import decode_from
from ..models.pipeline_folder import pipeline_index_of
from ..models.scheduler_config import scheduler_config_of
from ..models.wrapping import unwrap

__all__ = ["diffusers_scheduler", "model_scheduler", "sample_text_to_image"]


def diffusers_scheduler(config: dict[str, Any] | None, class_name: str | None = None) -> Any:
    """The diffusers scheduler a model was saved with (``scheduler/``): its
    class from ``class_name`` (model_index.json) or the config's ``_class_name``,
    DDIM when neither says."""
    import diffusers  # deferred: diffusers takes seconds to import; only text-to-image sampling needs it

    config = dict(config or {})
    name = class_name or config.get("_class_name") or "DDIMScheduler"
    if not hasattr(diffusers, name):
        raise ValueError(f"the model's scheduler class {name!r} is not a diffusers scheduler")
    return getattr(diffusers, name).from_config(config)


def model_scheduler(model: torch.nn.Module) -> Any:
    """The diffusers scheduler ``model`` was loaded (or trained) with: the class
    its model_index.json names and its scheduler config."""
    return diffusers_scheduler(scheduler_config_of(model), (pipeline_index_of(model) or {}).get("scheduler",
                                                                                              [None])[-1])


@torch.no_grad()
def sample_text_to_image(model: torch.nn.Module, scheduler: Any, latents: torch.Tensor, prompt_embeds: torch.Tensor,
                         negative_embeds: torch.Tensor, guidance_scale: float, steps: int,
                         generator: torch.Generator | None = None, eta: float = 0.0) -> torch.Tensor:
    """Images in [-1, 1] from the initial ``latents`` (B, C, h, w): the
    scheduler's step loop over ``steps`` timesteps, with classifier-free
    guidance ``eps_neg + scale * (eps_text - eps_neg)`` when ``guidance_scale``
    > 1 (diffusers' ``do_classifier_free_guidance``); ``prompt_embeds`` and
    ``negative_embeds`` are (B, L, D) hidden states."""
    unet = unwrap(model)
    device = latents.device
    scheduler.set_timesteps(steps, device=device)
    x = latents * scheduler.init_noise_sigma
    guided = guidance_scale > 1.0
    context = torch.cat([negative_embeds, prompt_embeds]) if guided else prompt_embeds
    context = context.to(device, next(unet.parameters()).dtype)
    extra: dict[str, Any] = {}
    params = set(inspect.signature(scheduler.step).parameters)
    if "eta" in params:
        extra["eta"] = eta
    if "generator" in params:
        extra["generator"] = generator
    for t in scheduler.timesteps:
        x_in = torch.cat([x] * 2) if guided else x
        x_in = scheduler.scale_model_input(x_in, t)
        out = unet(x_in.to(context.dtype), t, encoder_hidden_states=context).sample.float()
        if guided:
            neg, text = out.chunk(2)
            out = neg + guidance_scale * (text - neg)
        x = scheduler.step(out, t, x, **extra).prev_sample
    return decode_from(model, x.float())
