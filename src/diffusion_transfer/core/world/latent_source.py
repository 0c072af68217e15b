"""FaceWorld's latent world, second stage: a class-conditional latent source
model, the stand-in for the class-conditional ImageNet LDM (``cin256-v2``)
that ANL fine-tunes.

A diffusers ``UNet2DModel`` with ``num_class_embeds = len(LATENT_CLASSES) + 1``
(the last embedding is the null label of classifier-free guidance, as in
``cin256-v2``'s 1,001 and DiT) denoises the frozen VQ autoencoder's scaled
latents (:mod:`.autoencoder`) of renders of photos, portraits and artworks,
with the plain denoising loss on DDPM's linear schedule (the pixel world's,
:mod:`.source`) and label dropout: a share of the labels (10% by default) is
replaced by the null label, as classifier-free-guidance models are trained
(Ho & Salimans 2022). The returned model carries its autoencoder
(``LatentCodec``), its scheduler config and an ``LDMPipeline`` index, so
``save_unet`` writes ``model_index.json`` + ``unet/`` + ``scheduler/`` +
``vqvae/``, the folder ``DiffusionPipeline.from_pretrained`` loads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from diffusion_transfer.core.models.latent import LatentCodec, attach_latent_codec
from diffusion_transfer.core.models.pipeline_folder import attach_pipeline_index
from diffusion_transfer.core.models.scheduler_config import attach_scheduler_config
from diffusion_transfer.core.models.unet import build_unet
from diffusion_transfer.core.schedule import NoiseSchedule, make_schedule, randn, sample_timesteps
from diffusion_transfer.core.training import TrainConfig, train
from diffusion_transfer.core.world.autoencoder import LATENT_CLASSES, render_classes
from diffusion_transfer.core.world.common import torch_threads

#: A small UNet for 3x16x16 latents (1.7M parameters, attention at 8x8);
#: ``num_class_embeds`` is set from :data:`LATENT_CLASSES` (+ the null label).
DEFAULT_LATENT_UNET: dict[str, Any] = {
    "sample_size": 16,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 96],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 32,
    "norm_num_groups": 16,
}

#: ``model_index.json`` of the saved folder: an ``LDMPipeline`` with a DDIM scheduler, as diffusers' LDMs.
LDM_INDEX = {"_class_name": "LDMPipeline", "scheduler": ["diffusers", "DDIMScheduler"]}


class LatentDenoisingLoss:
    """``loss_fn(student, images, ..., condition=labels)``: the plain denoising
    loss on the frozen codec's latents of ``images``, each with its own class
    label (passed as ``class_labels=``), a ``label_dropout`` share of them
    replaced by the null label."""

    def __init__(self, codec: LatentCodec, schedule: NoiseSchedule, null_label: int, label_dropout: float = 0.1):
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        self.codec, self.schedule = codec, schedule
        self.null_label, self.label_dropout = int(null_label), float(label_dropout)

    def __call__(self, student, images: torch.Tensor, teacher=None, generator=None,
                 condition: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        if condition is None:
            raise ValueError("the latent source's loss needs each image's class label (train(conditions=labels))")
        z = self.codec.encode(images, batch_size=len(images))
        labels = condition.reshape(-1).long().to(z.device)
        drop = torch.rand(len(labels), generator=generator,
                          device=generator.device if generator is not None else "cpu").to(z.device)
        labels = torch.where(drop < self.label_dropout, torch.full_like(labels, self.null_label), labels)
        t = sample_timesteps(len(z), self.schedule.num_timesteps, z, generator)
        noise = randn(tuple(z.shape), z, generator)
        out = student(self.schedule.q_sample(z, t, noise), t, class_labels=labels).sample
        loss = ((out - self.schedule.training_target(z, noise, t)) ** 2).mean()
        return {"loss": loss}


def train_latent_source(
    autoencoder: torch.nn.Module,
    unet: dict[str, Any] | None,
    train_config: dict[str, Any],
    n_images: int,
    schedule: NoiseSchedule | dict[str, Any] | None = None,
    seed: int = 0,
    label_dropout: float = 0.1,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    num_threads: int | None = 1,
):
    """Train the class-conditional latent UNet from scratch on ``n_images``
    renders of :data:`LATENT_CLASSES` (labels by style), in the latent space
    of the frozen ``autoencoder`` (a ``VQModel``). Returns the EMA model with
    its codec, scheduler config and ``LDMPipeline`` index attached;
    ``model.train_info`` holds the settings and the wall time."""
    t0 = time.perf_counter()
    codec = LatentCodec(autoencoder, "vqvae")
    config = {**DEFAULT_LATENT_UNET, **(unet or {})}
    config.update(in_channels=codec.latent_channels, out_channels=codec.latent_channels,
                  num_class_embeds=len(LATENT_CLASSES) + 1)
    size = int(config["sample_size"]) * codec.downscale
    images, labels = render_classes(n_images, size, seed)
    sched = schedule if isinstance(schedule, NoiseSchedule) else make_schedule(**(schedule or {}))
    with torch_threads(num_threads):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_unet(config)
        loss = LatentDenoisingLoss(codec, sched, len(LATENT_CLASSES), label_dropout)
        result = train(model, loss, images, TrainConfig(**train_config), conditions=labels.float(),
                       checkpoint_dir=checkpoint_dir, progress=progress, desc="latent source model")
    model = result.final_model
    attach_scheduler_config(model, sched.scheduler_config())  # saved with it: sampled as it was trained
    attach_latent_codec(model, codec)
    attach_pipeline_index(model, dict(LDM_INDEX))
    model.train_info = {"n_images": n_images, "seed": seed, "label_dropout": label_dropout,
                        "classes": list(LATENT_CLASSES), "null_label": len(LATENT_CLASSES),
                        "wall_s": round(time.perf_counter() - t0, 1),
                        "final": result.history[-1] if result.history else None}
    return model


__all__ = ["DEFAULT_LATENT_UNET", "LDM_INDEX", "LatentDenoisingLoss", "train_latent_source"]
