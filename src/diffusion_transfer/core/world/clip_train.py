"""Training the world CLIP (:func:`train_world_clip`).

Training (:func:`train_world_clip`) renders a pool of faces of every style
with uniform attributes *in pairs*: both images of a pair share the render
seed and differ in exactly one captioned attribute (eyewear, expression,
gender or style), so every batch holds hard negatives for the attributes the
CLIP must tell apart.  Captions are the canonical caption or a random
:func:`caption_variants` caption, de-duplicated inside each batch so that
open_clip's :class:`ClipLoss` (the only loss) never sees two identical
captions.  AdamW, linear warm-up then cosine decay, light augmentation
(shift, flip, colour jitter, a little noise).

Training renders use seeds ``>= TRAIN_SEED_OFFSET`` (:mod:`.common`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import open_clip
import torch

from diffusion_transfer.core.world.clip import MODEL_NAME, WorldClip, create_world_clip_model, world_clip_model_config
from diffusion_transfer.core.world.common import (
    TRAIN_SEED_OFFSET,
    as_float_images,
    augment_images,
    coerce_config,
    config_to_dict,
    progress_bar,
    torch_threads,
)
from diffusion_transfer.core.world.captions import caption, caption_variants
from diffusion_transfer.core.world.render import (
    ATTRIBUTES,
    STYLES,
    FaceAttributes,
    render_face,
    sample_attributes,
)


# --------------------------------------------------------------------------- #
# Training configuration
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class WorldClipConfig:
    """Hyperparameters of :func:`train_world_clip` (see the module docstring)."""

    steps: int = 900
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 40
    #: image pairs rendered once (2 images each) and reused with augmentation
    pool_pairs: int = 8000
    image_size: int = 32
    styles: tuple[str, ...] = STYLES
    #: probability that an image's caption is the canonical caption (else a variant)
    canonical_p: float = 0.35
    #: which attribute the two images of a pair differ in, with relative weights; an
    #: ``age`` pair is captioned with the age words in both captions (the canonical
    #: caption omits age)
    pair_flips: tuple[tuple[str, float], ...] = (
        ("eyewear", 0.3), ("expression", 0.3), ("gender", 0.2), ("style", 0.2),
    )
    augment: bool = True
    max_shift: int = 2
    hflip: bool = True
    colour_jitter: float = 0.08
    noise_std: float = 0.04
    #: torch intra-op threads during training (restored afterwards); None leaves it alone
    num_threads: int | None = 1
    #: open_clip config overrides (e.g. a smaller tower for tests); {} = registered config
    model_cfg: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "pool_pairs", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"clip config: {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(f"clip config: batch_size must be even and >= 2, got {self.batch_size}")
        if self.pool_pairs * 2 < self.batch_size:
            raise ValueError(
                f"clip config: pool_pairs ({self.pool_pairs}) must give at least one batch "
                f"({self.batch_size} images)"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"clip config: lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("clip config: weight_decay and warmup_steps must be >= 0")
        if not 0.0 <= self.canonical_p <= 1.0:
            raise ValueError(f"clip config: canonical_p must be in [0, 1], got {self.canonical_p}")
        bad = [s for s in self.styles if s not in STYLES]
        if not self.styles or bad:
            raise ValueError(f"clip config: styles must be a non-empty subset of {STYLES}, got {self.styles}")
        flippable = ("eyewear", "expression", "gender", "style", "age")
        for name, w in self.pair_flips:
            if name not in flippable:
                raise ValueError(f"clip config: pair_flips attribute {name!r} not in {flippable}")
            if w < 0:
                raise ValueError(f"clip config: pair_flips weight for {name!r} must be >= 0")
        if sum(w for _, w in self.pair_flips) <= 0:
            raise ValueError("clip config: pair_flips weights sum to zero")
        if any(n == "style" for n, w in self.pair_flips if w > 0) and len(self.styles) < 2:
            raise ValueError("clip config: a 'style' pair flip needs at least two styles")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"clip config: num_threads must be >= 1 or None, got {self.num_threads}")


DEFAULT_CLIP_CONFIG = WorldClipConfig()


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
def _render_pair_pool(cfg: WorldClipConfig, seed: int, progress: bool):
    """``pool_pairs`` pairs of images (same render seed) differing in one captioned attribute."""
    rng = np.random.default_rng([seed, 7919])
    names = [n for n, _ in cfg.pair_flips]
    weights = np.array([w for _, w in cfg.pair_flips], dtype=np.float64)
    weights = weights / weights.sum()
    n = cfg.pool_pairs
    images = np.empty((2 * n, cfg.image_size, cfg.image_size, 3), np.uint8)
    attrs: list[FaceAttributes] = []
    base_seed = TRAIN_SEED_OFFSET + seed * 10 * n
    for g in progress_bar(range(n), progress, "world clip: render", n):
        style = cfg.styles[int(rng.integers(len(cfg.styles)))]
        a = sample_attributes(rng, style)
        flip = names[int(rng.choice(len(names), p=weights))]
        choices = cfg.styles if flip == "style" else ATTRIBUTES[flip]
        others = [v for v in choices if v != getattr(a, flip)]
        b = replace(a, **{flip: others[int(rng.integers(len(others)))]})
        rseed = base_seed + g
        images[2 * g] = render_face(a, cfg.image_size, rseed)
        images[2 * g + 1] = render_face(b, cfg.image_size, rseed)
        attrs.extend((a, b))
    return images, attrs


def _batch_captions(attrs: Sequence[FaceAttributes], rng: np.random.Generator,
                    canonical_p: float) -> list[str]:
    """One caption per image, no two identical (ClipLoss treats the diagonal as the only match).

    ``attrs`` holds pairs (images ``2k`` and ``2k + 1``); when a pair differs in
    age, both captions name the age, else the two would read alike."""
    seen: set[str] = set()
    out = []
    for i, a in enumerate(attrs):
        name_age = a.age != attrs[i ^ 1].age
        canonical = rng.random() < canonical_p and not name_age
        text = caption(a) if canonical else caption_variants(a, rng, name_age)
        tries = 0
        while text in seen and tries < 20:
            text = caption_variants(a, rng, name_age)
            tries += 1
        seen.add(text)
        out.append(text)
    return out


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name \
                or "embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, cfg: WorldClipConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


def _new_model(cfg: WorldClipConfig) -> tuple[torch.nn.Module, Any, WorldClip]:
    """A freshly initialised open_clip model (from the global torch RNG), its
    tokenizer, and the two wrapped as a :class:`WorldClip` for training."""
    model_cfg = {**world_clip_model_config(), **cfg.model_cfg}
    model_cfg["vision_cfg"] = {**model_cfg["vision_cfg"], "image_size": cfg.image_size}
    model = create_world_clip_model(model_cfg)
    model.world_clip_model_cfg = model_cfg
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    return model, tokenizer, WorldClip(model, tokenizer, None, MODEL_NAME, "training")


def _zero_unused_tokens(model: torch.nn.Module, used_tokens: set[int]) -> None:
    """Zero the token-embedding rows of tokens never seen in training (module docstring)."""
    with torch.no_grad():
        emb = model.token_embedding.weight
        keep = torch.zeros(emb.shape[0], dtype=torch.bool)
        keep[torch.tensor(sorted(used_tokens), dtype=torch.long)] = True
        emb[~keep] = 0.0


def train_world_clip(config: WorldClipConfig | Mapping[str, Any] | None = None, *, seed: int = 0,
                     progress: bool = True, callback=None) -> torch.nn.Module:
    """Train the world CLIP from scratch on freshly rendered FaceWorld images.

    ``callback(dict(step, loss, model))``, if given, runs after every optimiser step
    (the model is in train mode; switch to eval and back to probe it).

    Returns the open_clip model (eval mode, CPU).  ``model.world_clip_train_info``
    holds the config, wall time and final loss; rows of the token embedding for
    tokens never seen in training are zeroed (see the module docstring)."""
    cfg = coerce_config(config, WorldClipConfig, "clip")
    t0, c0 = time.perf_counter(), time.process_time()
    with torch_threads(cfg.num_threads):
        torch.manual_seed(seed)
        model, tokenizer, clip = _new_model(cfg)

        pool, pool_attrs = _render_pair_pool(cfg, seed, progress)
        pool_t = torch.from_numpy(pool)
        n_pairs = cfg.pool_pairs
        pairs_per_batch = cfg.batch_size // 2

        rng = np.random.default_rng([seed, 104729])
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98),
                                eps=1e-6)
        loss_fn = open_clip.ClipLoss()
        used_tokens: set[int] = set()
        order = rng.permutation(n_pairs)
        cursor = 0
        losses: list[float] = []
        model.train()
        bar = progress_bar(range(cfg.steps), progress, "world clip: train", cfg.steps)
        for step in bar:
            if cursor + pairs_per_batch > n_pairs:
                order, cursor = rng.permutation(n_pairs), 0
            groups = order[cursor:cursor + pairs_per_batch]
            cursor += pairs_per_batch
            idx = np.stack([2 * groups, 2 * groups + 1], axis=1).reshape(-1)
            x = as_float_images(pool_t[idx])
            if cfg.augment:
                x = augment_images(x, gen, max_shift=cfg.max_shift, hflip=cfg.hflip,
                                   colour_jitter=cfg.colour_jitter, noise_std=cfg.noise_std)
            texts = _batch_captions([pool_attrs[i] for i in idx], rng, cfg.canonical_p)
            tokens = tokenizer(texts)
            used_tokens.update(int(t) for t in torch.unique(tokens))
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            img = model.encode_image(clip.normalise(x), normalize=True)
            txt = model.encode_text(tokens, normalize=True)
            loss = loss_fn(img, txt, model.logit_scale.exp())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"world clip: non-finite loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            if callback is not None:
                callback({"step": step, "loss": losses[-1], "model": model})
            if progress and hasattr(bar, "set_postfix") and step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}",
                                scale=f"{float(model.logit_scale.detach().exp()):.1f}")
        model.eval()
        _zero_unused_tokens(model, used_tokens)
    model.world_clip_train_info = {
        "config": config_to_dict(cfg),
        "seed": seed,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "n_tokens_used": len(used_tokens),
    }
    return model


__all__ = ["DEFAULT_CLIP_CONFIG", "WorldClipConfig", "train_world_clip"]
