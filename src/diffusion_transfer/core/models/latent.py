"""A latent model's frozen autoencoder, kept with its UNet (latent diffusion,
Rombach et al. 2022).

A diffusers pipeline folder with ``vqvae/`` (``VQModel``, as ``LDMPipeline``
saves it) or ``vae/`` (``AutoencoderKL``) beside ``unet/`` is a latent model:
its UNet denoises ``scaling_factor * E(x)``, and samples are ``D(z /
scaling_factor)``. :func:`load_unet` attaches a :class:`LatentCodec` to the
UNet (a plain attribute, like the scheduler config: it is not part of the
UNet's ``state_dict`` and is never trained), so that every stage that turns
images into model inputs or model outputs into images asks
:func:`latent_codec_of` first.

Encoding follows the models' own code: a VQ autoencoder's latent is the
pre-quantisation ``h`` (``quant_conv`` output) and decoding quantises it
(CompVis ``VQModelInterface.encode`` / ``decode``, diffusers ``VQModel``); a
KL autoencoder's latent is the mean of its posterior (diffusers' training
scripts draw a sample each step instead: docs/DEVIATIONS.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .wrapping import attached, unwrap

__all__ = [
    "AUTOENCODER_FOLDERS",
    "LatentCodec",
    "attach_latent_codec",
    "autoencoder_downscale",
    "decode_from",
    "encode_for",
    "find_autoencoder",
    "latent_codec_of",
    "load_latent_codec",
    "pixel_size",
]

#: A pipeline folder's autoencoder, by folder name, and the diffusers class it must be.
AUTOENCODER_FOLDERS = {"vqvae": "VQModel", "vae": "AutoencoderKL"}


class LatentCodec:
    """A frozen autoencoder: ``encode`` images in [-1, 1] to scaled latents,
    ``decode`` them back. Shared, never copied: a ``deepcopy`` of the model
    it is attached to (the student, the EMA copy) shares it."""

    def __init__(self, autoencoder: torch.nn.Module, part: str, origin: str = "") -> None:
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.part = part  # "vqvae" or "vae": the folder it is saved in
        self.origin = origin
        config = autoencoder.config
        self.scaling_factor = float(config.get("scaling_factor", 1.0) or 1.0)
        self.latent_channels = int(config["latent_channels"])
        self.downscale = autoencoder_downscale(config)

    def __deepcopy__(self, memo: dict) -> "LatentCodec":
        return self

    @property
    def kind(self) -> str:
        return type(self.autoencoder).__name__

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        return (self.latent_channels, image_size // self.downscale, image_size // self.downscale)

    def describe(self, latent_size: int) -> str:
        """One line for reports: ``latent: VQModel (vqvae/ of <folder>), 3x16x16, scaled by 1``."""
        c, h, w = self.latent_channels, latent_size, latent_size
        where = f" of {self.origin}" if self.origin else ""
        return f"latent: {self.kind} ({self.part}/{where}), {c}x{h}x{w}, scaled by {self.scaling_factor:g}"

    def _on(self, x: torch.Tensor) -> torch.nn.Module:
        param = next(self.autoencoder.parameters())
        if param.device != x.device:
            self.autoencoder.to(x.device)
        return self.autoencoder

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Scaled latents of ``images`` (B, 3, H, W) in [-1, 1], float32."""
        out = []
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].float()
            enc = self._on(x).encode(x)
            z = enc.latents if hasattr(enc, "latents") else enc.latent_dist.mode()
            out.append(z.float() * self.scaling_factor)
        if not out:
            h, w = images.shape[-2] // self.downscale, images.shape[-1] // self.downscale
            return images.new_zeros((0, self.latent_channels, h, w))
        return torch.cat(out)

    def decode(self, latents: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Images in [-1, 1] of scaled ``latents``; differentiable (Asyrp's CLIP
        loss goes through it), so callers wrap it in ``no_grad`` when sampling."""
        out = []
        for i in range(0, len(latents), batch_size):
            z = latents[i : i + batch_size].float() / self.scaling_factor
            out.append(self._on(z).decode(z).sample.float().clamp(-1, 1))
        return torch.cat(out)

    def fingerprint(self) -> str:
        """A digest of the autoencoder's weights (keys of the latent cache)."""
        digest = hashlib.sha256(json.dumps(dict(self.autoencoder.config), sort_keys=True, default=str).encode())
        for name, tensor in sorted(self.autoencoder.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]


def latent_codec_of(model: torch.nn.Module | None) -> LatentCodec | None:
    """The autoencoder a model denoises in the latent space of, or None (a pixel model)."""
    return None if model is None else attached(model, "latent_codec", LatentCodec)


def attach_latent_codec(model: torch.nn.Module, codec: LatentCodec | None) -> torch.nn.Module:
    """Record ``codec`` on ``model`` (a plain attribute, outside the state dict)."""
    if codec is not None:
        object.__setattr__(unwrap(model), "latent_codec", codec)
    return model


def autoencoder_downscale(config: Any) -> int:
    """How much an autoencoder (its ``config.json``) shrinks an image: 2 per encoder block but the last."""
    return 2 ** (len(config.get("block_out_channels") or [0]) - 1)


def encode_for(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] as ``model``'s inputs: a latent model's scaled latents."""
    codec = latent_codec_of(model)
    return images if codec is None else codec.encode(images).to(images.device)


def decode_from(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``model`` denoises, as images in [-1, 1]: a latent model's latents decoded
    (differentiably: Asyrp's CLIP loss is taken on decoded x0 predictions)."""
    codec = latent_codec_of(model)
    return x if codec is None else codec.decode(x).to(x.device)


def pixel_size(model: torch.nn.Module) -> int:
    """The image resolution a model makes: its ``sample_size``, times the
    autoencoder's downscaling for a latent model."""
    base = unwrap(model)
    unet = getattr(base, "unet", base)
    size = unet.config.sample_size
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    codec = latent_codec_of(model)
    return size * codec.downscale if codec is not None else size


def find_autoencoder(folder: Path) -> tuple[str, Path] | None:
    """A pipeline folder's autoencoder: (part name, its folder), or None."""
    for part in AUTOENCODER_FOLDERS:
        if (folder / part / "config.json").is_file():
            return part, folder / part
    return None


def load_latent_codec(folder: Path) -> LatentCodec | None:
    """The frozen autoencoder of the pipeline folder ``folder``, or None when
    it has none. A ``vqvae/`` must hold a ``VQModel``, a ``vae/`` an
    ``AutoencoderKL`` (what ``model_index.json`` and ``config.json`` say)."""
    found = find_autoencoder(folder)
    if found is None:
        return None
    part, path = found
    import diffusers  # deferred: diffusers takes ~3 s to import, and pixel models never reach here

    config: dict[str, Any] = json.loads((path / "config.json").read_text())
    cls_name = config.get("_class_name") or AUTOENCODER_FOLDERS[part]
    if cls_name not in AUTOENCODER_FOLDERS.values():
        raise ValueError(f"{path / 'config.json'} describes a {cls_name}; an autoencoder folder must hold a "
                         f"VQModel (vqvae/) or an AutoencoderKL (vae/)")
    model = getattr(diffusers, cls_name).from_pretrained(str(path), local_files_only=True)
    return LatentCodec(model, part, origin=str(folder))
