"""The FaceWorld attribute classifier, used ONLY for evaluation.

A small CNN on 32x32 inputs (one 3x3 conv at 32 px, two at each of 16 and
8 px, max-pooling to a 4x4 grid that is flattened so the heads see *where* things
are) with one softmax head per attribute in ``ATTRIBUTES`` plus a binary
face / not-a-face head.  It is never a training signal for the diffusion
models; evaluation code calls :func:`predict_attributes`.

Training: :mod:`.classifier_train`; files: :mod:`.classifier_io`; held-out
evaluation: :mod:`.classifier_eval`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from diffusion_transfer.core.world.common import as_float_images, resize_images
from diffusion_transfer.core.world.render import ATTRIBUTES

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
# Prediction
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


__all__ = [
    "FACE_KEY",
    "NEGATIVE_KINDS",
    "AttributeClassifier",
    "classifier_probs",
    "predict_attributes",
]
