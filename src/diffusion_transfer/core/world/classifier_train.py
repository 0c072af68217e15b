"""Training the FaceWorld attribute classifier (:func:`train_attribute_classifier`).

Training data (:func:`train_attribute_classifier`), all freshly rendered:

- faces of every style with uniform attributes, lightly augmented (shift,
  flip, colour jitter, mild blur, a little noise) so that imperfect samples
  of a diffusion model still count as faces;
- "not a face": :func:`render_non_face` images (blobs, stripes, smooth
  noise, scrambled faces, loose parts), faces drowned in Gaussian noise
  (sigma 0.5-1.5 on the [-1, 1] scale), random smooth noise fields,
  faces blurred to a 3-6 px blob, and half-formed faces (a face blended
  with a non-face or noise field).

Training renders use seeds ``>= TRAIN_SEED_OFFSET`` (:mod:`.common`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffusion_transfer.core.world.classifier import FACE_KEY, NEGATIVE_KINDS, AttributeClassifier
from diffusion_transfer.core.world.common import (
    TRAIN_SEED_OFFSET,
    as_float_images,
    augment_images,
    coerce_config,
    config_to_dict,
    progress_bar,
    torch_threads,
)
from diffusion_transfer.core.world.render import ATTRIBUTES, STYLES, render_face, render_non_face, sample_attributes


# --------------------------------------------------------------------------- #
# Config
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class ClassifierConfig:
    """Hyperparameters of :func:`train_attribute_classifier`."""

    steps: int = 1400
    batch_size: int = 96
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    #: faces rendered once and reused with augmentation
    pool_faces: int = 10000
    #: ``render_non_face`` images rendered once
    pool_non_faces: int = 3000
    #: share of each batch that is "not a face"
    negative_fraction: float = 0.35
    #: relative frequency of each negative kind (NEGATIVE_KINDS order)
    negative_mix: tuple[float, ...] = (0.4, 0.2, 0.15, 0.15, 0.1)
    image_size: int = 32
    widths: tuple[int, ...] = (24, 48, 64)
    dropout: float = 0.1
    label_smoothing: float = 0.05
    styles: tuple[str, ...] = STYLES
    #: positives: max Gaussian noise std (on [-1, 1]) and probability of a mild blur
    positive_noise: float = 0.08
    positive_blur_p: float = 0.2
    num_threads: int | None = 1

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "pool_faces", "pool_non_faces", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"classifier config: {name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"classifier config: lr must be > 0, got {self.lr}")
        if not 0.0 < self.negative_fraction < 1.0:
            raise ValueError(f"classifier config: negative_fraction must be in (0, 1), got {self.negative_fraction}")
        if len(self.negative_mix) != len(NEGATIVE_KINDS) or min(self.negative_mix) < 0 \
                or sum(self.negative_mix) <= 0:
            raise ValueError(
                f"classifier config: negative_mix must hold {len(NEGATIVE_KINDS)} weights >= 0 "
                f"for {NEGATIVE_KINDS}, got {self.negative_mix}"
            )
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ValueError(f"classifier config: widths must be three positive ints, got {self.widths}")
        if self.image_size % 8:
            raise ValueError(f"classifier config: image_size must be a multiple of 8, got {self.image_size}")
        bad = [s for s in self.styles if s not in STYLES]
        if not self.styles or bad:
            raise ValueError(f"classifier config: styles must be a non-empty subset of {STYLES}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"classifier config: num_threads must be >= 1 or None, got {self.num_threads}")


DEFAULT_CLASSIFIER_CONFIG = ClassifierConfig()


def _coerce_classifier(config: Any) -> ClassifierConfig:
    if isinstance(config, Mapping):
        config = dict(config)
        for key in ("negative_mix", "widths", "styles"):
            if key in config:
                config[key] = tuple(config[key])
    return coerce_config(config, ClassifierConfig, "classifier")


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #
def _smooth_noise(b: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random smooth colour fields: low-res noise (2-8 px) upsampled bicubically."""
    out = []
    for _ in range(b):
        k = int(torch.randint(2, 9, (1,), generator=gen))
        low = torch.rand(1, 3, k, k, generator=gen) * 2 - 1
        amp = 0.3 + 0.7 * torch.rand(1, generator=gen)
        out.append(F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False) * amp)
    return torch.cat(out).clamp(-1, 1)


def _blur_to(x: torch.Tensor, px: int) -> torch.Tensor:
    size = x.shape[-1]
    small = F.interpolate(x, size=(px, px), mode="area")
    return F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def make_negatives(kind: str, faces: torch.Tensor, non_faces: torch.Tensor,
                    gen: torch.Generator) -> torch.Tensor:
    """``faces``/``non_faces``: float (n, 3, S, S) in [-1, 1] drawn for this kind."""
    b, _, s, _ = faces.shape
    if kind == "render_non_face":
        return non_faces
    if kind == "noised_face":
        sigma = 0.5 + torch.rand(b, 1, 1, 1, generator=gen)
        keep = 0.3 + 0.7 * torch.rand(b, 1, 1, 1, generator=gen)
        return (keep * faces + sigma * torch.randn(faces.shape, generator=gen)).clamp(-1, 1)
    if kind == "smooth_noise":
        return _smooth_noise(b, s, gen)
    if kind == "blurred_blob":
        px = int(torch.randint(3, 7, (1,), generator=gen))
        return _blur_to(faces, px)
    # half_formed: a face fading into a non-face image or a smooth noise field, slightly blurred
    t = 0.35 + 0.3 * torch.rand(b, 1, 1, 1, generator=gen)
    other = non_faces if bool(torch.rand(1, generator=gen) < 0.5) else _smooth_noise(b, s, gen)
    mix = (1 - t) * faces + t * other
    return _blur_to(mix, int(torch.randint(6, 11, (1,), generator=gen)))


def _augment_faces(x: torch.Tensor, cfg: ClassifierConfig, gen: torch.Generator) -> torch.Tensor:
    x = augment_images(x, gen, max_shift=2, hflip=True, colour_jitter=0.1, noise_std=cfg.positive_noise)
    if cfg.positive_blur_p > 0:
        blur = torch.rand(x.shape[0], generator=gen) < cfg.positive_blur_p
        if bool(blur.any()):
            px = int(torch.randint(max(8, x.shape[-1] * 5 // 8), x.shape[-1], (1,), generator=gen))
            x = torch.where(blur[:, None, None, None], _blur_to(x, px), x)
    return x


def _render_pools(cfg: ClassifierConfig, seed: int, progress: bool):
    rng = np.random.default_rng([seed, 31337])
    base = TRAIN_SEED_OFFSET + 500_000_000 + seed * 10 * cfg.pool_faces
    s = cfg.image_size
    faces = np.empty((cfg.pool_faces, s, s, 3), np.uint8)
    labels = np.empty((cfg.pool_faces, len(ATTRIBUTES)), np.int64)
    names = list(ATTRIBUTES)
    for i in progress_bar(range(cfg.pool_faces), progress, "classifier: render faces", cfg.pool_faces):
        a = sample_attributes(rng, cfg.styles[i % len(cfg.styles)])
        faces[i] = render_face(a, s, base + i)
        labels[i] = [ATTRIBUTES[n].index(getattr(a, n)) for n in names]
    nrng = np.random.default_rng([seed, 27183])
    non_faces = np.stack([render_non_face(nrng, s) for _ in range(cfg.pool_non_faces)])
    return faces, labels, non_faces


def _lr_at(step: int, cfg: ClassifierConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
def train_attribute_classifier(config: ClassifierConfig | Mapping[str, Any] | None = None, *,
                               seed: int = 0, progress: bool = True) -> AttributeClassifier:
    """Train the attribute classifier from scratch on freshly rendered images.
    Returns the model in eval mode; ``model.train_info`` holds config, wall time, loss."""
    cfg = _coerce_classifier(config)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch_threads(cfg.num_threads):
        torch.manual_seed(seed)
        model = AttributeClassifier(ATTRIBUTES, cfg.widths, cfg.image_size, cfg.dropout)
        faces_np, labels_np, non_faces_np = _render_pools(cfg, seed, progress)
        faces = as_float_images(torch.from_numpy(faces_np))
        labels = torch.from_numpy(labels_np)
        non_faces = as_float_images(torch.from_numpy(non_faces_np))
        names = list(ATTRIBUTES)
        gen = torch.Generator().manual_seed(seed)
        mix = torch.tensor(cfg.negative_mix, dtype=torch.float64)
        n_neg = max(1, int(round(cfg.batch_size * cfg.negative_fraction)))
        n_pos = max(1, cfg.batch_size - n_neg)
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        losses: list[float] = []
        model.train()
        bar = progress_bar(range(cfg.steps), progress, "classifier: train", cfg.steps)
        for step in bar:
            pi = torch.randint(0, faces.shape[0], (n_pos,), generator=gen)
            pos = _augment_faces(faces[pi], cfg, gen)
            kinds = torch.multinomial(mix, n_neg, replacement=True, generator=gen)
            negs = []
            for k, kind in enumerate(NEGATIVE_KINDS):
                m = int((kinds == k).sum())
                if m == 0:
                    continue
                fi = torch.randint(0, faces.shape[0], (m,), generator=gen)
                ni = torch.randint(0, non_faces.shape[0], (m,), generator=gen)
                nf = augment_images(non_faces[ni], gen, max_shift=2, colour_jitter=0.1, noise_std=0.05)
                negs.append(make_negatives(kind, faces[fi], nf, gen))
            x = torch.cat([pos] + negs)
            is_face = torch.cat([torch.ones(n_pos, dtype=torch.long), torch.zeros(x.shape[0] - n_pos,
                                                                                   dtype=torch.long)])
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            out = model(x)
            loss = F.cross_entropy(out[FACE_KEY], is_face, label_smoothing=cfg.label_smoothing)
            for j, name in enumerate(names):
                loss = loss + F.cross_entropy(out[name][:n_pos], labels[pi, j],
                                              label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"classifier: non-finite loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if progress and hasattr(bar, "set_postfix") and step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        model.eval()
    model.train_info = {
        "config": config_to_dict(cfg),
        "seed": seed,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
    }
    return model


__all__ = [
    "DEFAULT_CLASSIFIER_CONFIG",
    "ClassifierConfig",
    "make_negatives",
    "train_attribute_classifier",
]
