"""Held-out evaluation of the attribute classifier (renders with seeds below
``TRAIN_SEED_OFFSET``): accuracy per attribute and style, face rate, and
rejection of every kind of "not a face" image."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffusion_transfer.core.world.classifier import (
    FACE_KEY,
    NEGATIVE_KINDS,
    AttributeClassifier,
    predict_attributes,
)
from diffusion_transfer.core.world.classifier_train import make_negatives
from diffusion_transfer.core.world.common import TRAIN_SEED_OFFSET, as_float_images, render_held_out
from diffusion_transfer.core.world.render import STYLES, render_face, render_non_face, sample_attributes


def render_held_out_negatives(n: int, seed: int = 12345, size: int = 32) -> dict[str, torch.Tensor]:
    """``n`` held-out "not a face" images of every kind in NEGATIVE_KINDS, float [-1, 1]."""
    rng = np.random.default_rng([seed, 99])
    gen = torch.Generator().manual_seed(seed)
    non_faces = as_float_images(np.stack([render_non_face(rng, size) for _ in range(n)]))
    faces = as_float_images(np.stack([
        render_face(sample_attributes(rng, STYLES[i % len(STYLES)]), size, int(rng.integers(TRAIN_SEED_OFFSET)))
        for i in range(n)
    ]))
    return {kind: make_negatives(kind, faces, non_faces, gen) for kind in NEGATIVE_KINDS}


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


__all__ = ["evaluate_attribute_classifier", "render_held_out_negatives"]
