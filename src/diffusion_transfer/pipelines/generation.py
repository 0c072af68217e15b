"""Generating images from a bank of noises, shared by the stages that sample a
model (``sample``, and ANL's condition experiments in ``anl_conditions``):
the sampler ``sampling.sampler`` on every noise, batch by batch, with
classifier-free guidance for a class-conditional model, a conditional
model's i-th condition on noise i, and a latent model's samples decoded."""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm

from diffusion_transfer.core.models.class_labels import guided_eps, is_class_conditional
from diffusion_transfer.core.sampling import model_eps_fn, sample_ddim, sample_ddpm
from diffusion_transfer.pipelines.model_space import to_images
from diffusion_transfer.pipelines.utils import inference_setup
from diffusion_transfer.project.schema import SamplingParams


def generate(model, noise: torch.Tensor, p: SamplingParams, sched, conditions: torch.Tensor | None) -> torch.Tensor:
    """Images in [-1, 1] (float32, CPU), one per noise; the sampler's own noise
    is drawn on the CPU from ``sampling.seed + 1``, so every device gives the same samples."""
    device, dtype = inference_setup(p.precision)
    model.eval().to(device)
    eps_fn = model_eps_fn(model, sched, autocast_dtype=dtype, compile=p.compile, channels_last=p.channels_last)
    if is_class_conditional(model):  # classifier-free guidance (scale 1: the model as it is)
        eps_fn = guided_eps(eps_fn, model, p.guidance_scale)
    out = []
    gen = torch.Generator().manual_seed(p.seed + 1)
    with tqdm(total=len(noise), desc=f"sampling ({p.sampler}, {p.steps} steps)", unit="img") as bar:
        for i in range(0, len(noise), p.batch_size):
            x = noise[i : i + p.batch_size].to(device)
            ctx = model.conditioned(conditions[i : i + p.batch_size].to(device)) if conditions is not None \
                else contextlib.nullcontext()
            with ctx:
                if p.sampler == "ddim":
                    x0 = sample_ddim(eps_fn, x, sched, steps=p.steps, eta=p.eta, generator=gen)
                else:
                    x0 = sample_ddpm(eps_fn, x, sched, steps=p.steps, generator=gen)
            out.append(to_images(model, x0.float()).cpu())  # a latent model's samples, decoded
            bar.update(len(x))
    return torch.cat(out)
