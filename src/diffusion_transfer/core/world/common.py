"""Helpers shared by the world CLIP and the attribute classifier: config
coercion, image conversion / resizing / augmentation, file digests, torch
thread counts, progress bars, and the held-out render convention.

Held-out convention: training renders use seeds ``>= TRAIN_SEED_OFFSET``;
evaluation renders (tests, :func:`render_held_out`, the models' evaluations)
use seeds below it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffusion_transfer.core.world.render import STYLES, render_face, sample_attributes

#: Training renders use seeds >= this; held-out evaluation renders use seeds below it.
TRAIN_SEED_OFFSET = 1_000_000


# --------------------------------------------------------------------------- #
# Config coercion
# --------------------------------------------------------------------------- #
def coerce_config(config: Any, cls: type, what: str):
    """dataclass instance, mapping (unknown keys rejected, naming them) or None -> ``cls``."""
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if not isinstance(config, Mapping):
        raise TypeError(f"{what} config must be a mapping or {cls.__name__}, got {type(config).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise ValueError(f"{what} config: unknown parameter(s) {unknown}; expected some of {sorted(names)}")
    kwargs = dict(config)
    for key in ("styles",):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    if "pair_flips" in kwargs:
        pf = kwargs["pair_flips"]
        items = pf.items() if isinstance(pf, Mapping) else pf
        kwargs["pair_flips"] = tuple((str(k), float(v)) for k, v in items)
    if "model_cfg" in kwargs:
        kwargs["model_cfg"] = dict(kwargs["model_cfg"] or {})
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-friendly dict of a config dataclass."""
    d = asdict(config)
    return json.loads(json.dumps(d))


# --------------------------------------------------------------------------- #
# Image helpers
# --------------------------------------------------------------------------- #
def as_float_images(images: Any) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` (numpy or torch) or float ``(B, 3, H, W)`` in [-1, 1] ->
    float32 ``(B, 3, H, W)``.  Anything else raises ``ValueError``: other shapes or
    dtypes, NaN/inf, or float values far outside [-1, 1] (a 0..255 float array);
    a small overshoot (|x| <= 1.5, e.g. unclipped diffusion samples) is accepted."""
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8:
            images = torch.from_numpy(np.ascontiguousarray(images))
        else:
            images = torch.from_numpy(np.asarray(images, dtype=np.float32))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got shape {tuple(images.shape)}")
        return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 (N, H, W, 3) or float (B, 3, H, W), got {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"float images must be (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    if images.numel():
        with torch.no_grad():
            if not bool(torch.isfinite(images).all()):
                raise ValueError("float images contain NaN or inf")
            peak = float(images.detach().abs().max())
        if peak > 1.5:
            raise ValueError(
                f"float images must be in [-1, 1] (max |value| is {peak:.3g}); "
                "pass uint8 (N, H, W, 3) arrays for 0..255 pixels"
            )
    return images.float()


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic (antialiased when shrinking) resize of (B, 3, H, W) to ``size``x``size``."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False,
                         antialias=bool(x.shape[-1] > size or x.shape[-2] > size))


def augment_images(x: torch.Tensor, gen: torch.Generator, *, max_shift: int = 2,
                   hflip: bool = True, colour_jitter: float = 0.08,
                   noise_std: float = 0.04) -> torch.Tensor:
    """Light augmentation of (B, 3, H, W) in [-1, 1]: reflect-pad shift, horizontal flip,
    per-image brightness/contrast jitter and a little Gaussian noise."""
    b, _, h, w = x.shape
    if max_shift > 0:
        p = int(max_shift)
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    if hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if colour_jitter > 0:
        c = 1.0 + colour_jitter * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
        o = colour_jitter * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
        x = x * c + o
    if noise_std > 0:
        s = noise_std * torch.rand(b, 1, 1, 1, generator=gen)
        x = x + s * torch.randn(x.shape, generator=gen)
    return x.clamp(-1.0, 1.0)


def file_digest(path: str | Path) -> str:
    """First 12 hex digits of a file's sha256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def progress_bar(iterable, enabled: bool, desc: str, total: int):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True)


# --------------------------------------------------------------------------- #
# Held-out renders
# --------------------------------------------------------------------------- #
def render_held_out(n: int, style: str, seed: int = 12345, size: int = 32):
    """``n`` uniform-attribute faces of ``style`` rendered with seeds below
    ``TRAIN_SEED_OFFSET`` (never used in training)."""
    rng = np.random.default_rng([seed, STYLES.index(style)])
    attrs = [sample_attributes(rng, style) for _ in range(n)]
    seeds = rng.integers(0, TRAIN_SEED_OFFSET, size=n)
    images = np.stack([render_face(a, size, int(s)) for a, s in zip(attrs, seeds)])
    return images, attrs


__all__ = [
    "TRAIN_SEED_OFFSET",
    "as_float_images",
    "augment_images",
    "coerce_config",
    "config_to_dict",
    "file_digest",
    "progress_bar",
    "render_held_out",
    "resize_images",
    "torch_threads",
]
