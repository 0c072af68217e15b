"""Held-out evaluation of the world CLIP: zero-shot attribute accuracy and
ranking quality (renders with seeds below ``TRAIN_SEED_OFFSET``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffusion_transfer.core.world.clip import AAHQ_PROMPT, WorldClip
from diffusion_transfer.core.world.common import render_held_out
from diffusion_transfer.core.world.render import STYLES


def evaluate_world_clip(clip: WorldClip, n_per_style: int = 200, seed: int = 12345,
                        attributes: Sequence[str] = ("eyewear", "expression"),
                        styles: Sequence[str] = STYLES, size: int = 32) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy ``{attribute: {style: acc, "all": acc}}`` on held-out renders."""
    out: dict[str, dict[str, float]] = {a: {} for a in attributes}
    totals = {a: [0, 0] for a in attributes}
    for style in styles:
        images, attrs = render_held_out(n_per_style, style, seed, size)
        for attribute in attributes:
            pred = clip.predict_attribute(images, attrs, attribute)
            hits = sum(p == getattr(a, attribute) for p, a in zip(pred, attrs))
            out[attribute][style] = hits / len(attrs)
            totals[attribute][0] += hits
            totals[attribute][1] += len(attrs)
    for attribute, (h, t) in totals.items():
        out[attribute]["all"] = h / max(t, 1)
    return out


def ranking_quality(scores: Any, target: Any, top_fraction: float = 0.2) -> dict[str, float]:
    """How well ``scores`` (higher = better match) rank the ``target`` (bool) items first:
    precision and recall of the top ``top_fraction``, R-precision (precision of the top
    ``n_targets``) and ROC AUC."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    t = torch.as_tensor(np.asarray(target, dtype=bool)).flatten()
    if s.shape != t.shape or s.numel() == 0:
        raise ValueError(f"scores {tuple(s.shape)} and target {tuple(t.shape)} must be equal, non-empty")
    order = torch.argsort(s, descending=True)
    n, n_pos = s.numel(), int(t.sum())
    k = max(1, int(round(top_fraction * n)))
    hits_k = int(t[order[:k]].sum())
    r_prec = float(t[order[:n_pos]].float().mean()) if n_pos else float("nan")
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[torch.argsort(s)] = torch.arange(1, n + 1, dtype=torch.float64)
    n_neg = n - n_pos
    auc = float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)) if n_pos and n_neg else float("nan")
    return {
        "n": n, "n_targets": n_pos, "base_rate": n_pos / n,
        f"precision_at_top_{int(top_fraction * 100)}pct": hits_k / k,
        f"recall_at_top_{int(top_fraction * 100)}pct": hits_k / n_pos if n_pos else float("nan"),
        "r_precision": r_prec, "auc": auc,
    }


def held_out_metrics(clip: WorldClip, seed: int = 12345) -> dict[str, Any]:
    """What ``world_clip.json`` records: zero-shot accuracy on every captioned
    attribute, and how the AAHQ curation prompt ranks expressionless men
    without glasses among 480 held-out artworks."""
    images, attrs = render_held_out(480, "artwork", seed)
    target = [a.expression == "neutral" and a.gender == "man" and a.eyewear == "none" for a in attrs]
    return {
        "zero_shot_held_out": evaluate_world_clip(
            clip, seed=seed, attributes=("eyewear", "expression", "gender", "age", "style")),
        "aahq_prompt_ranking_held_out_artworks_480": ranking_quality(clip.similarity(images, AAHQ_PROMPT), target),
    }


__all__ = ["evaluate_world_clip", "held_out_metrics", "ranking_quality"]
