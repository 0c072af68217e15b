"""The FaceWorld attribute classifier, used ONLY for evaluation.

A small CNN on 32x32 inputs (one 3x3 conv at 32 px, two at each of 16 and
8 px, max-pooling to a 4x4 grid that is flattened so the heads see *where* things
are) with one softmax head per attribute in ``ATTRIBUTES`` plus a binary
face / not-a-face head.  It is never a training signal for the diffusion
models; evaluation code calls :func:`predict_attributes`.

Training data (:func:`train_attribute_classifier`), all freshly rendered:

- faces of every style with uniform attributes, lightly augmented (shift,
  flip, colour jitter, mild blur, a little noise) so that imperfect samples
  of a diffusion model still count as faces;
- "not a face": :func:`render_non_face` images (blobs, stripes, smooth
  noise, scrambled faces, loose parts), faces drowned in Gaussian noise
  (sigma 0.5-1.5 on the [-1, 1] scale), random smooth noise fields,
  faces blurred to a 3-6 px blob, and half-formed faces (a face blended
  with a non-face or noise field).

Files (:func:`save_attribute_classifier`): ``classifier.safetensors`` (fp32)
and ``classifier.json`` (architecture, attribute value order, training
config and metrics).  Training renders use seeds ``>= TRAIN_SEED_OFFSET``
(see ``clip.py``); evaluation renders use seeds below it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from diffusion_transfer.core.io import require_weights_folder
from diffusion_transfer.core.world.clip import (
    TRAIN_SEED_OFFSET,
    _coerce,
    _progress,
    as_float_images,
    atomic_write_folder,
    augment_images,
    config_to_dict,
    file_digest,
    render_held_out,
    resize_images,
    torch_threads,
)
from diffusion_transfer.core.world.render import (
    ATTRIBUTES,
    STYLES,
    render_face,
    render_non_face,
    sample_attributes,
)

FORMAT_VERSION = 1
WEIGHTS_FILE = "classifier.safetensors"
META_FILE = "classifier.json"
FACE_KEY = "is_face"
NEGATIVE_KINDS = ("render_non_face", "noised_face", "smooth_noise", "blurred_blob", "half_formed")


# --------------------------------------------------------------------------- #
# Model
# --------------------------------------------------------------------------- #
def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class AttributeClassifier(nn.Module):
    """CNN trunk + one linear head per attribute + a 2-way face head.

    ``forward(x)`` takes (B, 3, image_size, image_size) in [-1, 1] and returns
    ``{attribute: logits, "is_face": logits (B, 2)}``.
    """

    def __init__(self, attributes: Mapping[str, Sequence[str]] | None = None,
                 widths: Sequence[int] = (24, 48, 64), image_size: int = 32, dropout: float = 0.1):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, got {image_size}")
        self.attributes = {k: tuple(v) for k, v in (attributes or ATTRIBUTES).items()}
        self.widths = tuple(int(w) for w in widths)
        self.image_size = int(image_size)
        w0, w1, w2 = self.widths
        self.trunk = nn.Sequential(
            _conv(3, w0), nn.MaxPool2d(2),
            _conv(w0, w1), _conv(w1, w1), nn.MaxPool2d(2),
            _conv(w1, w2), _conv(w2, w2), nn.MaxPool2d(2),
        )
        feat = w2 * (image_size // 8) ** 2
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(feat, len(vals)) for name, vals in self.attributes.items()})
        self.face_head = nn.Linear(feat, 2)

    def arch_config(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "image_size": self.image_size,
                "attributes": {k: list(v) for k, v in self.attributes.items()}}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.dropout(self.trunk(x).flatten(1))
        out = {name: head(h) for name, head in self.heads.items()}
        out[FACE_KEY] = self.face_head(h)
        return out


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
    return _coerce(config, ClassifierConfig, "classifier")


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


def _make_negatives(kind: str, faces: torch.Tensor, non_faces: torch.Tensor,
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
    for i in _progress(range(cfg.pool_faces), progress, "classifier: render faces", cfg.pool_faces):
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
        bar = _progress(range(cfg.steps), progress, "classifier: train", cfg.steps)
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
                negs.append(_make_negatives(kind, faces[fi], nf, gen))
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


# --------------------------------------------------------------------------- #
# Save / load
# --------------------------------------------------------------------------- #
def save_attribute_classifier(model: AttributeClassifier, folder: str | Path, *,
                              metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``classifier.safetensors`` (fp32) + ``classifier.json`` atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "name": "faceworld-attribute-classifier",
        "format_version": FORMAT_VERSION,
        "arch": model.arch_config(),
        "train": getattr(model, "train_info", None),
        "metrics": dict(metrics or {}),
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return atomic_write_folder(folder, write)


def load_attribute_classifier(folder: str | Path, device: str | torch.device = "cpu") -> AttributeClassifier:
    """Load a folder written by :func:`save_attribute_classifier` (model in eval mode)."""
    folder = Path(folder)
    weights, meta_path = require_weights_folder(
        folder, WEIGHTS_FILE, META_FILE, "attribute classifier",
        "Restore data/06_models/world/classifier from git or rebuild it with the `world` "
        "pipeline (train_attribute_classifier + save_attribute_classifier).")
    meta = json.loads(meta_path.read_text())
    if int(meta.get("format_version", -1)) != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    arch = meta["arch"]
    model = AttributeClassifier(arch["attributes"], arch["widths"], arch["image_size"])
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights} does not match the architecture in {meta_path}: {exc}") from exc
    model.train_info = meta.get("train")
    model.meta = meta
    model.weights_label = f"faceworld attribute classifier ({folder.name}/{WEIGHTS_FILE} sha256:{file_digest(weights)})"
    return model.to(device).eval()


# --------------------------------------------------------------------------- #
# Prediction and evaluation
# --------------------------------------------------------------------------- #
def classifier_probs(model: AttributeClassifier, images: Any, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Softmax probabilities ``{attribute: (B, n_values), "is_face": (B,)}`` (CPU float32)."""
    x = as_float_images(images)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = resize_images(x[i:i + batch_size].to(dev).clamp(-1.0, 1.0), model.image_size)
            out = model(xb)
            chunks.append({k: v.float().softmax(-1).cpu() for k, v in out.items()})
    model.train(was_training)
    keys = list(model.attributes) + [FACE_KEY]
    if not chunks:
        return {k: torch.zeros(0) for k in keys}
    probs = {k: torch.cat([c[k] for c in chunks]) for k in keys}
    probs[FACE_KEY] = probs[FACE_KEY][:, 1]
    return probs


def predict_attributes(model: AttributeClassifier, images: Any, *, face_threshold: float = 0.5,
                       with_confidence: bool = False) -> list[dict[str, Any]]:
    """One dict per image: every attribute -> predicted value, plus ``"is_face": bool``
    (face probability > ``face_threshold``).  ``images``: float (B, 3, H, W) in [-1, 1]
    or uint8 (N, H, W, 3); resized to the model's input size.  With ``with_confidence``
    each dict also holds ``"face_prob"`` and ``"<attribute>_prob"``."""
    probs = classifier_probs(model, images)
    n = probs[FACE_KEY].shape[0]
    idx = {k: probs[k].argmax(-1) for k in model.attributes}
    out = []
    for i in range(n):
        d: dict[str, Any] = {k: model.attributes[k][int(idx[k][i])] for k in model.attributes}
        d[FACE_KEY] = bool(probs[FACE_KEY][i] > face_threshold)
        if with_confidence:
            d["face_prob"] = float(probs[FACE_KEY][i])
            for k in model.attributes:
                d[f"{k}_prob"] = float(probs[k][i, idx[k][i]])
        out.append(d)
    return out


def render_held_out_negatives(n: int, seed: int = 12345, size: int = 32) -> dict[str, torch.Tensor]:
    """``n`` held-out "not a face" images of every kind in NEGATIVE_KINDS, float [-1, 1]."""
    rng = np.random.default_rng([seed, 99])
    gen = torch.Generator().manual_seed(seed)
    non_faces = as_float_images(np.stack([render_non_face(rng, size) for _ in range(n)]))
    faces = as_float_images(np.stack([
        render_face(sample_attributes(rng, STYLES[i % len(STYLES)]), size, int(rng.integers(TRAIN_SEED_OFFSET)))
        for i in range(n)
    ]))
    return {kind: _make_negatives(kind, faces, non_faces, gen) for kind in NEGATIVE_KINDS}


def evaluate_attribute_classifier(model: AttributeClassifier, n_per_style: int = 200, seed: int = 12345,
                                  size: int = 32, n_negatives: int = 200) -> dict[str, Any]:
    """Held-out accuracy per attribute and style, face rate on renders, rejection rate per
    negative kind, and hair-colour accuracy where hair is visible (not bald)."""
    res: dict[str, Any] = {"attributes": {}, "face_rate": {}, "non_face_rejection": {},
                           "hair_colour_not_bald": {}}
    hits = {a: {} for a in model.attributes}
    all_hits = {a: [0, 0] for a in model.attributes}
    faces_ok = [0, 0]
    hair = [0, 0]
    for style in STYLES:
        images, attrs = render_held_out(n_per_style, style, seed, size)
        preds = predict_attributes(model, images)
        ok = sum(p[FACE_KEY] for p in preds)
        res["face_rate"][style] = ok / len(preds)
        faces_ok[0] += ok
        faces_ok[1] += len(preds)
        for a in model.attributes:
            h = sum(p[a] == getattr(t, a) for p, t in zip(preds, attrs))
            hits[a][style] = h / len(preds)
            all_hits[a][0] += h
            all_hits[a][1] += len(preds)
        if "hair_colour" in model.attributes:
            # a bald head shows no hair colour: score it where it is visible
            vis = [(p, t) for p, t in zip(preds, attrs) if t.hair_style != "bald"]
            h = sum(p["hair_colour"] == t.hair_colour for p, t in vis)
            res["hair_colour_not_bald"][style] = h / max(1, len(vis))
            hair[0] += h
            hair[1] += len(vis)
    res["hair_colour_not_bald"]["all"] = hair[0] / max(1, hair[1])
    for a in model.attributes:
        res["attributes"][a] = {**hits[a], "all": all_hits[a][0] / all_hits[a][1]}
    res["face_rate"]["all"] = faces_ok[0] / faces_ok[1]
    negs = render_held_out_negatives(n_negatives, seed, size)
    tot = [0, 0]
    for kind, x in negs.items():
        preds = predict_attributes(model, x)
        rej = sum(not p[FACE_KEY] for p in preds)
        res["non_face_rejection"][kind] = rej / len(preds)
        tot[0] += rej
        tot[1] += len(preds)
    res["non_face_rejection"]["all"] = tot[0] / tot[1]
    return res


__all__ = [
    "DEFAULT_CLASSIFIER_CONFIG",
    "NEGATIVE_KINDS",
    "AttributeClassifier",
    "ClassifierConfig",
    "classifier_probs",
    "evaluate_attribute_classifier",
    "load_attribute_classifier",
    "predict_attributes",
    "render_held_out_negatives",
    "save_attribute_classifier",
    "train_attribute_classifier",
]
