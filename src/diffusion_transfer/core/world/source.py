"""The FaceWorld source model: a diffusers ``UNet2DModel`` trained on
``faceworld_ffhq`` (the FFHQ stand-in) with the shared training loop and the
plain denoising loss, exactly as a naive fine-tune would train it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffusion_transfer.core.data.images import to_tensor
from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.models.unet import build_unet
from diffusion_transfer.core.models.scheduler_config import attach_scheduler_config
from diffusion_transfer.core.schedule import NoiseSchedule, make_schedule
from diffusion_transfer.core.training import TrainConfig, train
from diffusion_transfer.core.world.domains import render_batch

#: A small ADM-like UNet for 32x32: 1.1M parameters, attention at 8x8.
DEFAULT_SOURCE_UNET: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "attention_head_dim": 32,
    "norm_num_groups": 16,
}


def train_source_model(
    unet: dict[str, Any],
    train_config: dict[str, Any],
    n_images: int,
    schedule: NoiseSchedule | dict[str, Any] | None = None,
    domain: str = "faceworld_ffhq",
    seed: int = 0,
    loss: dict[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
):
    """Render ``n_images`` of ``domain`` and train a UNet on them from scratch.

    ``loss`` holds the denoising loss's weighting (e.g. ``{"weighting": "p2",
    "gamma": 1.0}``, as for the P2-weighted FFHQ model the SDFT paper starts
    from). ``seed`` sets the rendered images and the initial weights (drawn
    from a forked random stream, so the result does not depend on what ran
    before). Returns the EMA model (or the raw model when EMA is off)."""
    config = {**DEFAULT_SOURCE_UNET, **(unet or {})}
    images, _ = render_batch(domain, n_images, int(config["sample_size"]), seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_unet(config)
    sched = schedule if isinstance(schedule, NoiseSchedule) else make_schedule(**(schedule or {}))
    method = build_method("scratch", dict(loss or {}), sched)
    result = train(model, method.loss_fn, to_tensor(images), TrainConfig(**train_config),
                   checkpoint_dir=checkpoint_dir, progress=progress, desc="source model")
    model = result.ema_model if result.ema_model is not None else result.model
    return attach_scheduler_config(model, sched.scheduler_config())  # saved with it: sampled as it was trained
