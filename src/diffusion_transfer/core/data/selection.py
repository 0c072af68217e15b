"""Curation selection rules on plain arrays: score threshold / top-N,
exclusion lists, CLIP zero-shot removal and the few-shot split.

Selection functions return index arrays into the ingested images, in input
order. When a step leaves nothing, :class:`EmptyCurationError` names the
parameter to change; the caller passes its configuration prefix
(``param_prefix="curate_aahq."``) so the message matches the user's YAML.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class EmptyCurationError(ValueError):
    """Curation kept no image; the message names the parameter to change."""


def check_scores(names: Sequence[str], scores: Any, what: str = "scores") -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1 or len(arr) != len(names):
        raise ValueError(f"{what} must be one value per image: {len(names)} names, {what} shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = [names[i] for i in np.flatnonzero(~np.isfinite(arr))[:5]]
        raise ValueError(f"{what} contain NaN or inf (e.g. for {bad})")
    return arr


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def select_by_score(
    names: Sequence[str],
    scores: Any,
    threshold: float | None = None,
    top_n: int | None = None,
    *,
    param_prefix: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Keep images scoring ``>= threshold``, or the ``top_n`` highest scores.

    Exactly one of ``threshold`` and ``top_n`` must be given. Returns
    ``(kept_idx, dropped_idx)``, both ascending. Ties at the ``top_n`` cut go
    to the earlier image. Raises :class:`EmptyCurationError` (naming
    ``<param_prefix>threshold``) when no image reaches the threshold.
    """
    p_thr, p_top = f"{param_prefix}threshold", f"{param_prefix}top_n"
    if (threshold is None) == (top_n is None):
        raise ValueError(
            f"set exactly one of {p_thr} and {p_top} (got {p_thr}={threshold!r}, {p_top}={top_n!r})"
        )
    arr = check_scores(names, scores)
    n = len(arr)
    if threshold is not None:
        if not _is_number(threshold) or not math.isfinite(float(threshold)):
            raise ValueError(f"{p_thr} must be a finite number, got {threshold!r}")
        keep = arr >= float(threshold)
        if not keep.any():
            best = f"max score {arr.max():.3f}" if n else "no images were scored"
            raise EmptyCurationError(
                f"no image scored at or above {p_thr}={float(threshold):g} ({best} over {n} images); "
                f"lower {p_thr} or use {p_top} instead"
            )
    else:
        if not isinstance(top_n, (int, np.integer)) or isinstance(top_n, bool) or top_n < 1:
            raise ValueError(f"{p_top} must be a positive integer, got {top_n!r}")
        if n == 0:
            raise EmptyCurationError(f"no images to select from ({p_top}={top_n})")
        if top_n > n:
            logger.warning("%s=%d is more than the %d scored images: keeping all", p_top, top_n, n)
        order = np.argsort(-arr, kind="stable")
        keep = np.zeros(n, dtype=bool)
        keep[order[: int(top_n)]] = True
    return np.flatnonzero(keep).astype(np.int64), np.flatnonzero(~keep).astype(np.int64)


class ExclusionResult(tuple):
    """``(kept_idx, excluded_names)``, plus ``.missing`` and ``.warnings``.

    Unpacks as a pair; ``missing`` lists exclusion entries that match no
    image in the data (a warning, not an error).
    """

    missing: list[str]
    warnings: list[str]

    def __new__(cls, kept_idx: np.ndarray, excluded_names: list[str], missing: list[str]):
        self = super().__new__(cls, (kept_idx, excluded_names))
        self.missing = list(missing)
        self.warnings = [
            f"exclusion list entry {m!r} matches no image in the data" for m in self.missing
        ]
        return self

    @property
    def kept_idx(self) -> np.ndarray:
        return self[0]

    @property
    def excluded_names(self) -> list[str]:
        return self[1]


def _normalise_exclusions(exclude: Iterable[str] | str | None) -> list[str]:
    if exclude is None:
        return []
    if isinstance(exclude, str):
        exclude = [exclude]
    out: list[str] = []
    for entry in exclude:
        if not isinstance(entry, str):
            raise ValueError(f"exclusion list entries must be file names, got {entry!r}")
        entry = entry.strip()
        if entry and entry not in out:
            out.append(entry)
    return out


def apply_exclusions(
    names: Sequence[str], kept_idx: Sequence[int], exclude: Iterable[str] | str | None
) -> ExclusionResult:
    """Remove the images named in ``exclude`` from ``kept_idx``.

    An entry matches a file name exactly (``"00012.png"``) or its stem
    (``"00012"``). Returns ``(kept_idx, excluded_names)`` where
    ``excluded_names`` are the names actually removed; entries matching no
    image are listed in ``result.missing`` / ``result.warnings`` and logged.
    """
    entries = _normalise_exclusions(exclude)
    kept = np.asarray(kept_idx, dtype=np.int64).reshape(-1)
    if len(kept) and (kept.min() < 0 or kept.max() >= len(names)):
        raise ValueError(f"kept_idx out of range for {len(names)} names")
    by_key: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_key.setdefault(name, []).append(i)
        stem = Path(name).stem
        if stem != name:
            by_key.setdefault(stem, []).append(i)
    drop: set[int] = set()
    missing: list[str] = []
    for entry in entries:
        hits = by_key.get(entry)
        if hits:
            drop.update(hits)
        else:
            missing.append(entry)
    new_kept = np.asarray([i for i in kept if int(i) not in drop], dtype=np.int64)
    excluded_names = [names[int(i)] for i in kept if int(i) in drop]
    result = ExclusionResult(new_kept, excluded_names, missing)
    for w in result.warnings:
        logger.warning(w)
    return result


def zero_shot_remove(
    probabilities: Any,
    remove_class_indices: Sequence[int] | int,
    threshold: float = 0.5,
    *,
    param_prefix: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop images whose summed probability over the removed classes exceeds ``threshold``.

    ``probabilities`` is ``(N, P)`` (e.g. zero-shot over "a portrait without
    glasses", "... with glasses", "... with sunglasses"); ``remove_class_indices``
    picks the unwanted prompts. Returns ``(kept_idx, dropped_idx, p_removed)``
    with ``p_removed`` the summed probability ``(N,)``.
    """
    p_thr = f"{param_prefix}threshold"
    p_idx = f"{param_prefix}remove_class_indices"
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ValueError(f"probabilities must be (N, P), got shape {probs.shape}")
    if not np.all(np.isfinite(probs)) or probs.min(initial=0.0) < -1e-6 or probs.max(initial=0.0) > 1 + 1e-6:
        raise ValueError("probabilities must be finite and within [0, 1]")
    idx = [remove_class_indices] if isinstance(remove_class_indices, (int, np.integer)) else list(remove_class_indices)
    if not idx or any(
        isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < probs.shape[1] for i in idx
    ):
        raise ValueError(f"{p_idx} must be indices in [0, {probs.shape[1]}), got {remove_class_indices!r}")
    if not _is_number(threshold) or not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"{p_thr} must be a number in (0, 1], got {threshold!r}")
    p_removed = probs[:, sorted(set(int(i) for i in idx))].sum(axis=1)
    drop = p_removed > float(threshold)
    if len(probs) and drop.all():
        raise EmptyCurationError(
            f"CLIP zero-shot removed all {len(probs)} images (min p={p_removed.min():.2f} > "
            f"{p_thr}={float(threshold):g}); raise {p_thr} or check the prompts"
        )
    return (
        np.flatnonzero(~drop).astype(np.int64),
        np.flatnonzero(drop).astype(np.int64),
        p_removed.astype(np.float32),
    )


def few_shot_split(
    names: Sequence[str], n_shot: int = 10, seed: int = 0, *, param_prefix: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic N-shot selection: ``(shot_idx, rest_idx)``, both ascending.

    The choice depends only on the sorted names and ``seed``, not on the
    order in which files were listed. The remainder is the evaluation
    reference set.
    """
    p_n = f"{param_prefix}n_shot"
    if isinstance(n_shot, bool) or not isinstance(n_shot, (int, np.integer)) or n_shot < 1:
        raise ValueError(f"{p_n} must be a positive integer, got {n_shot!r}")
    if n_shot > len(names):
        raise EmptyCurationError(f"{p_n}={n_shot} but only {len(names)} images are available; lower {p_n}")
    by_name = sorted(range(len(names)), key=lambda i: names[i])
    perm = np.random.default_rng(seed).permutation(len(names))
    chosen = np.zeros(len(names), dtype=bool)
    chosen[[by_name[j] for j in perm[: int(n_shot)]]] = True
    return np.flatnonzero(chosen).astype(np.int64), np.flatnonzero(~chosen).astype(np.int64)


__all__ = [
    "EmptyCurationError",
    "ExclusionResult",
    "apply_exclusions",
    "check_scores",
    "few_shot_split",
    "select_by_score",
    "zero_shot_remove",
]
