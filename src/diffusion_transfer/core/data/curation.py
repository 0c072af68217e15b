"""Dataset curation: the curation result and the two curation steps.

:class:`CurationResult` and :func:`curate_by_score` / :func:`curate_zero_shot`
live here; the parts they use live in :mod:`.embeddings` (CLIP embeddings and
scores through ``encode_images`` / ``encode_text`` callables, the embedding
cache), :mod:`.selection` (selection rules, :class:`EmptyCurationError`) and
:mod:`.contact_sheet`.

Selection functions return index arrays into the ingested images, in input
order. When a step leaves nothing, :class:`EmptyCurationError` names the
parameter to change; the caller passes its configuration prefix
(``param_prefix="datasets.aahq.curation."``) so the message matches the user's YAML.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .contact_sheet import curation_contact_sheet
from .selection import (
    EmptyCurationError,
    apply_exclusions,
    check_scores,
    select_by_score,
    zero_shot_remove,
)

STAGE_SCORE = "score"
STAGE_EXCLUDED = "excluded"
STAGE_ZERO_SHOT = "zero_shot"
_STAGE_TAGS = {STAGE_EXCLUDED: "excluded", STAGE_ZERO_SHOT: "zero-shot"}


# --------------------------------------------------------------------------
# Result and report
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DroppedImage:
    """One image removed by curation: its index, name, stage and reason."""

    index: int
    name: str
    stage: str  # "score" | "excluded" | "zero_shot"
    reason: str
    score: float | None = None


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean())}


@dataclass
class CurationResult:
    """Outcome of curating one dataset.

    ``names`` are the ingested (valid) images, aligned with the ingested
    array; ``kept_idx`` indexes into them; ``dropped`` explains every other
    image; ``skipped`` lists files that never made it past ingest. ``scores``
    (``score_name`` says what they are) may be ``None``.
    """

    names: list[str]
    kept_idx: np.ndarray
    dropped: list[DroppedImage] = field(default_factory=list)
    scores: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    threshold: float | None = None
    top_n: int | None = None
    score_name: str = "clip_similarity"
    warnings: list[str] = field(default_factory=list)
    criteria: dict[str, Any] = field(default_factory=dict)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.names = list(self.names)
        self.kept_idx = np.asarray(self.kept_idx, dtype=np.int64).reshape(-1)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(self.scores) != len(self.names):
                raise ValueError(f"{len(self.scores)} scores for {len(self.names)} names")
        accounted = set(self.kept_idx.tolist()) | {d.index for d in self.dropped}
        if len(accounted) != len(self.names) or len(self.kept_idx) + len(self.dropped) != len(self.names):
            raise ValueError("every image must be either kept or dropped exactly once")

    @property
    def kept_names(self) -> list[str]:
        return [self.names[i] for i in self.kept_idx]

    @property
    def dropped_idx(self) -> np.ndarray:
        return np.asarray(sorted(d.index for d in self.dropped), dtype=np.int64)

    @property
    def dropped_names(self) -> list[str]:
        return [d.name for d in sorted(self.dropped, key=lambda d: d.index)]

    def select(self, images: np.ndarray) -> np.ndarray:
        """The kept images out of the ingested array (aligned with ``names``)."""
        if len(images) != len(self.names):
            raise ValueError(f"{len(images)} images for {len(self.names)} curated names")
        return np.asarray(images)[self.kept_idx]

    def count(self, stage: str) -> int:
        return sum(1 for d in self.dropped if d.stage == stage)

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable report: counts, parameters, score stats, lists."""
        dropped = sorted(self.dropped, key=lambda d: d.index)
        score_stats = None
        if self.scores is not None:
            score_stats = {
                "name": self.score_name,
                "all": _stats(self.scores),
                "kept": _stats(self.scores[self.kept_idx]),
                "dropped": _stats(self.scores[self.dropped_idx]),
            }
        return {
            "counts": {
                "files": len(self.names) + len(self.skipped),
                "skipped_invalid": len(self.skipped),
                "valid": len(self.names),
                "scored": len(self.names) if self.scores is not None else 0,
                "kept": int(len(self.kept_idx)),
                "dropped_by_score": self.count(STAGE_SCORE),
                "dropped_by_zero_shot": self.count(STAGE_ZERO_SHOT),
                "excluded": self.count(STAGE_EXCLUDED),
            },
            "threshold": None if self.threshold is None else float(self.threshold),
            "top_n": None if self.top_n is None else int(self.top_n),
            "criteria": dict(self.criteria),
            "scores": score_stats,
            "skipped": [{"file": n, "reason": r} for n, r in self.skipped],
            "dropped": [
                {"file": d.name, "stage": d.stage, "reason": d.reason, "score": d.score} for d in dropped
            ],
            "conversions": [{"file": n, "note": r} for n, r in self.notes],
            "warnings": list(self.warnings),
            "kept": self.kept_names,
        }

    def contact_sheet(self, images: np.ndarray, max_each: int = 64, **kwargs: Any) -> Image.Image:
        """:func:`curation_contact_sheet` of the ingested images, labelled with names and scores."""
        if len(images) != len(self.names):
            raise ValueError(f"{len(images)} images for {len(self.names)} curated names")
        return curation_contact_sheet(
            images, self.kept_idx, self.dropped_idx, max_each=max_each,
            names=self.names, scores=self.scores,
            tags={d.index: _STAGE_TAGS.get(d.stage, d.stage) for d in self.dropped if d.stage != STAGE_SCORE},
            **kwargs,
        )


def _exclusion_drops(
    names: Sequence[str], kept: np.ndarray, exclude: Any, scores: np.ndarray | None, p_excl: str
) -> tuple[np.ndarray, list[DroppedImage], list[str]]:
    res = apply_exclusions(names, kept, exclude)
    new_kept = res.kept_idx
    removed = sorted(set(kept.tolist()) - set(new_kept.tolist()))
    drops = [
        DroppedImage(i, names[i], STAGE_EXCLUDED, "excluded by name",
                     None if scores is None else float(scores[i]))
        for i in removed
    ]
    if len(kept) and not len(new_kept):
        raise EmptyCurationError(
            f"the exclusion list {p_excl} removed all {len(kept)} remaining images; shorten {p_excl}"
        )
    return new_kept, drops, [f"{p_excl}: {w}" for w in res.warnings]


def curate_by_score(
    names: Sequence[str],
    scores: Any,
    *,
    threshold: float | None = None,
    top_n: int | None = None,
    exclude: Iterable[str] | str | None = None,
    skipped: Sequence[tuple[str, str]] = (),
    notes: Sequence[tuple[str, str]] = (),
    criteria: dict[str, Any] | None = None,
    param_prefix: str = "",
) -> CurationResult:
    """Score selection (threshold or top-N), then the exclusion list (AAHQ)."""
    arr = check_scores(names, scores)
    kept, dropped_idx = select_by_score(names, arr, threshold, top_n, param_prefix=param_prefix)
    if threshold is not None:
        drops = [
            DroppedImage(int(i), names[i], STAGE_SCORE,
                         f"score {arr[i]:.3f} < threshold {float(threshold):.3f}", float(arr[i]))
            for i in dropped_idx
        ]
    else:
        cut = float(arr[kept].min())
        drops = [
            DroppedImage(int(i), names[i], STAGE_SCORE,
                         f"score {arr[i]:.3f} not in top {int(top_n)} (cut-off {cut:.3f})", float(arr[i]))
            for i in dropped_idx
        ]
    kept, excl, warns = _exclusion_drops(names, kept, exclude, arr, f"{param_prefix}exclude")
    return CurationResult(
        names=list(names), kept_idx=kept, dropped=drops + excl, scores=arr,
        skipped=list(skipped), threshold=threshold, top_n=top_n, warnings=warns,
        criteria=dict(criteria or {}), notes=list(notes),
    )


def curate_zero_shot(
    names: Sequence[str],
    probabilities: Any,
    remove_class_indices: Sequence[int] | int,
    *,
    threshold: float = 0.5,
    label: str = "glasses",
    exclude: Iterable[str] | str | None = None,
    skipped: Sequence[tuple[str, str]] = (),
    notes: Sequence[tuple[str, str]] = (),
    criteria: dict[str, Any] | None = None,
    param_prefix: str = "",
) -> CurationResult:
    """CLIP zero-shot removal, then the exclusion list (MetFaces glasses)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(names):
        raise ValueError(f"probabilities must be (N, P) with N={len(names)}, got shape {probs.shape}")
    kept, dropped_idx, p = zero_shot_remove(probs, remove_class_indices, threshold, param_prefix=param_prefix)
    drops = [
        DroppedImage(int(i), names[i], STAGE_ZERO_SHOT, f"CLIP zero-shot: {label} p={p[i]:.2f}", float(p[i]))
        for i in dropped_idx
    ]
    kept, excl, warns = _exclusion_drops(names, kept, exclude, p, f"{param_prefix}exclude")
    crit = {"zero_shot_threshold": float(threshold), "zero_shot_label": label}
    crit.update(criteria or {})
    return CurationResult(
        names=list(names), kept_idx=kept, dropped=drops + excl, scores=p,
        skipped=list(skipped), score_name=f"p({label})", warnings=warns,
        criteria=crit, notes=list(notes),
    )


__all__ = [
    "STAGE_EXCLUDED",
    "STAGE_SCORE",
    "STAGE_ZERO_SHOT",
    "CurationResult",
    "DroppedImage",
    "curate_by_score",
    "curate_zero_shot",
]
