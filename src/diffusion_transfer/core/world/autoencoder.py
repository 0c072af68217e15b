"""FaceWorld's latent world, first stage: a small VQ autoencoder (diffusers
``VQModel``, the layout of LDM's VQ-f4) trained on renders of the latent
source's classes (``faceworld_latent_classes``: photos, portraits, artworks).

As LDM trains its first stage (Rombach et al. 2022, appendix G; taming's
``VQModel``): a reconstruction loss (L1) plus the quantiser's codebook and
commitment terms, with the straight-through estimator; the perceptual (LPIPS)
and patch-GAN terms are left out (at 32x32 the L1 reconstruction already
keeps the attributes; docs/FACEWORLD.md). Code vectors no batch used for a
while are restarted on encoder outputs of the current batch (a common VQ
remedy against dead codes: Dhariwal et al. 2020, Jukebox), since a small
codebook trained from diffusers' near-zero initialisation collapses.

The latent is what :class:`~diffusion_transfer.core.models.latent.LatentCodec`
encodes: the pre-quantisation ``h``; decoding quantises it. The trained
model's ``scaling_factor`` is ``1 / std(h)`` over the training images, as
LDM's ``scale_by_std`` and Stable Diffusion's 0.18215 do (LDM's VQ-f4 itself
keeps 1.0), so the UNet sees latents of unit variance.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from diffusion_transfer.core.data.images import to_tensor
from diffusion_transfer.core.training import TrainConfig, train
from diffusion_transfer.core.world.common import torch_threads
from diffusion_transfer.core.world.domains import render_batch

#: Renders of these classes train the autoencoder and the latent source; a
#: class's label is its index here (the null label follows: ``len(LATENT_CLASSES)``).
LATENT_CLASSES: tuple[str, ...] = ("photo", "portrait", "artwork")
LATENT_DOMAIN = "faceworld_latent_classes"

#: A VQ-f2 for 32x32: two encoder blocks (one downsampling) to 3x16x16 latents,
#: a 512-entry codebook of 3-d codes (LDM's VQ-f4: 3-d codes, 8,192 entries).
DEFAULT_AUTOENCODER: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "sample_size": 32,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "latent_channels": 3,
    "vq_embed_dim": 3,
    "num_vq_embeddings": 512,
    "norm_num_groups": 16,
    "scaling_factor": 1.0,
}


def build_autoencoder(config: dict[str, Any] | None = None):
    """A randomly initialised ``VQModel`` from :data:`DEFAULT_AUTOENCODER` updated by ``config``."""
    from diffusers import VQModel  # deferred: diffusers takes seconds to import

    cfg = {**DEFAULT_AUTOENCODER, **(config or {})}
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
        cfg[key] = tuple(cfg[key])
    return VQModel(**cfg)


def render_classes(n_images: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_images`` of :data:`LATENT_DOMAIN` as float (N, 3, size, size) in [-1, 1]
    and their class labels (N,) (indices into :data:`LATENT_CLASSES`)."""
    images, attrs = render_batch(LATENT_DOMAIN, n_images, size, seed)
    labels = torch.tensor([LATENT_CLASSES.index(a.style) for a in attrs], dtype=torch.long)
    return to_tensor(images), labels


class VQLoss:
    """``loss_fn(student, images, ...)`` of the training loop: L1 reconstruction
    plus the quantiser's codebook + commitment loss; every ``restart_every``
    calls, codes no batch picked since the last restart move onto random
    pre-quantisation vectors of the current batch."""

    def __init__(self, restart_every: int = 25) -> None:
        self.restart_every = int(restart_every)
        self.calls = 0
        self.used: torch.Tensor | None = None

    def __call__(self, student, images: torch.Tensor, teacher=None, generator=None, **_: Any) -> dict[str, torch.Tensor]:
        model = getattr(student, "module", student)
        h = model.encode(images).latents
        quant, vq_loss, (_, _, idx) = model.quantize(h)
        recon = model.decode(quant, force_not_quantize=True).sample
        rec = (recon - images).abs().mean()
        self._track(model, h.detach(), idx.detach().reshape(-1), generator)
        return {"loss": rec + vq_loss, "l1": rec.detach(), "vq": vq_loss.detach(),
                "mse": ((recon.detach() - images) ** 2).mean()}

    @torch.no_grad()
    def _track(self, model, h: torch.Tensor, idx: torch.Tensor, generator) -> None:
        codebook = model.quantize.embedding.weight
        if self.used is None:
            self.used = torch.zeros(codebook.shape[0], dtype=torch.bool)
        self.used[idx.cpu()] = True
        self.calls += 1
        if self.restart_every <= 0 or self.calls % self.restart_every:
            return
        dead = (~self.used).nonzero().flatten()
        if len(dead):
            vectors = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
            pick = torch.randint(0, len(vectors), (len(dead),), generator=generator,
                                 device=generator.device if generator is not None else "cpu")
            codebook[dead.to(codebook.device)] = vectors[pick.to(vectors.device)].to(codebook.dtype)
        self.used.zero_()


@torch.no_grad()
def latent_std(model, images: torch.Tensor, batch_size: int = 256) -> float:
    """The standard deviation of the pre-quantisation latents of ``images``."""
    model.eval()
    h = torch.cat([model.encode(images[i:i + batch_size]).latents for i in range(0, len(images), batch_size)])
    return float(h.std())


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Encode, quantise and decode ``images`` (what a latent model's samples go through)."""
    model.eval()
    out = [model.decode(model.encode(images[i:i + batch_size]).latents).sample.clamp(-1, 1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) over images in [-1, 1] (peak-to-peak 2)."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(4.0 / mse)).mean())


def train_autoencoder(
    autoencoder: dict[str, Any] | None,
    train_config: dict[str, Any],
    n_images: int,
    seed: int = 0,
    restart_every: int = 25,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    num_threads: int | None = 1,
):
    """Train the VQ autoencoder on ``n_images`` renders of the latent classes.
    Returns the ``VQModel`` in eval mode, its ``scaling_factor`` set to 1/std
    of the training latents; ``model.train_info`` holds the settings, times
    and the training set's codebook use. ``num_threads``: torch threads (one
    is several times faster than two on two shared cores)."""
    with torch_threads(num_threads):
        return _train_autoencoder(autoencoder, train_config, n_images, seed, restart_every, checkpoint_dir, progress)


def _train_autoencoder(autoencoder, train_config, n_images, seed, restart_every, checkpoint_dir, progress):
    t0 = time.perf_counter()
    config = {**DEFAULT_AUTOENCODER, **(autoencoder or {})}
    images, _ = render_classes(n_images, int(config["sample_size"]), seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_autoencoder(config)
    loss = VQLoss(restart_every)
    result = train(model, loss, images, TrainConfig(**{"ema_decay": 0.0, **train_config}),
                   checkpoint_dir=checkpoint_dir, progress=progress, desc="autoencoder")
    model = result.final_model.eval()
    std = latent_std(model, images)
    model.register_to_config(scaling_factor=round(1.0 / std, 5))
    with torch.no_grad():
        idx = torch.cat([model.quantize(model.encode(images[i:i + 256]).latents)[2][2].reshape(-1)
                         for i in range(0, len(images), 256)])
    model.train_info = {
        "n_images": n_images, "seed": seed, "latent_std": round(std, 5),
        "scaling_factor": model.config.scaling_factor,
        "codes_used": int(idx.unique().numel()), "train_psnr": round(psnr(reconstruct(model, images[:512]),
                                                                          images[:512]), 2),
        "wall_s": round(time.perf_counter() - t0, 1),
        "final": result.history[-1] if result.history else None,
    }
    return model


__all__ = [
    "DEFAULT_AUTOENCODER",
    "LATENT_CLASSES",
    "LATENT_DOMAIN",
    "VQLoss",
    "build_autoencoder",
    "latent_std",
    "psnr",
    "reconstruct",
    "render_classes",
    "train_autoencoder",
]
