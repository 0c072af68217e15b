"""Dataset curation: CLIP scoring, selection, exclusion lists, contact sheets.

Everything here works on plain arrays and callables, so that the world CLIP
(``conf/base``) and open_clip ViT-B/32 (``conf/paper``) plug in the same way:

- ``encode_images(x)`` takes ``float (B, 3, H, W)`` in ``[-1, 1]`` and returns
  L2-normalised embeddings ``(B, D)`` (tensor or array);
- ``encode_text(prompts)`` takes a list of strings and returns ``(P, D)``.

Selection functions return index arrays into the ingested images, in input
order. When a step leaves nothing, :class:`EmptyCurationError` names the
parameter to change; the caller passes its configuration prefix
(``param_prefix="curate_aahq."``) so the message matches the user's YAML.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .images import to_tensor

logger = logging.getLogger(__name__)

EncodeImages = Callable[[torch.Tensor], Any]
EncodeText = Callable[[list[str]], Any]

STAGE_SCORE = "score"
STAGE_EXCLUDED = "excluded"
STAGE_ZERO_SHOT = "zero_shot"
_STAGE_TAGS = {STAGE_EXCLUDED: "excluded", STAGE_ZERO_SHOT: "zero-shot"}


class EmptyCurationError(ValueError):
    """Curation kept no image; the message names the parameter to change."""


# --------------------------------------------------------------------------
# Embeddings and scores
# --------------------------------------------------------------------------


def _as_numpy_2d(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must return a 2-D array of embeddings, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} returned non-finite values (NaN or inf)")
    return arr


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _check_images(images_uint8: np.ndarray) -> np.ndarray:
    arr = np.asarray(images_uint8)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {arr.dtype} {arr.shape}")
    if len(arr) == 0:
        raise ValueError("no images to score: the image array is empty")
    return arr


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def image_embeddings(
    encode_images: EncodeImages,
    images_uint8: np.ndarray,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """L2-normalised image embeddings ``float32 (N, D)``, computed in batches."""
    images = _check_images(images_uint8)
    batch_size = _check_batch_size(batch_size)
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = to_tensor(images[start : start + batch_size])
            if device is not None:
                x = x.to(device)
            emb = _as_numpy_2d(encode_images(x), "encode_images")
            if len(emb) != len(x):
                raise ValueError(
                    f"encode_images returned {len(emb)} embeddings for a batch of {len(x)} images"
                )
            out.append(emb)
    return _l2_normalise(np.concatenate(out, axis=0))


def text_embeddings(encode_text: EncodeText, prompts: str | Sequence[str]) -> np.ndarray:
    """L2-normalised text embeddings ``float32 (P, D)``."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"prompts must be non-empty strings, got {prompts!r}")
    with torch.inference_mode():
        emb = _as_numpy_2d(encode_text(prompts), "encode_text")
    if len(emb) != len(prompts):
        raise ValueError(f"encode_text returned {len(emb)} embeddings for {len(prompts)} prompts")
    return _l2_normalise(emb)


def scores_from_embeddings(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Cosine similarity: ``(N,)`` for one text embedding, ``(N, P)`` for several."""
    img = _l2_normalise(_as_numpy_2d(image_emb, "image embeddings"))
    txt = np.asarray(text_emb, dtype=np.float32)
    single = txt.ndim == 1 or (txt.ndim == 2 and len(txt) == 1)
    txt = _l2_normalise(_as_numpy_2d(txt, "text embeddings"))
    if img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"embedding sizes differ: images {img.shape[1]}, text {txt.shape[1]} (different models?)"
        )
    sims = img @ txt.T
    return sims[:, 0] if single else sims


def clip_scores(
    encode_images: EncodeImages,
    encode_text: EncodeText,
    images_uint8: np.ndarray,
    prompt: str,
    batch_size: int = 256,
) -> np.ndarray:
    """Cosine similarity ``float32 (N,)`` between every image and ``prompt``."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a single string, got {type(prompt).__name__}")
    txt = text_embeddings(encode_text, [prompt])
    img = image_embeddings(encode_images, images_uint8, batch_size=batch_size)
    return scores_from_embeddings(img, txt)


def zero_shot_probabilities(
    image_emb: np.ndarray, text_emb: np.ndarray, logit_scale: float = 100.0
) -> np.ndarray:
    """CLIP zero-shot class probabilities ``(N, P)``: softmax of scaled cosines."""
    sims = np.asarray(scores_from_embeddings(image_emb, text_emb), dtype=np.float64)
    if sims.ndim == 1:
        raise ValueError("zero-shot classification needs at least two prompts")
    logits = float(logit_scale) * sims
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def embedding_cache_key(images_uint8: np.ndarray, model_id: str) -> str:
    """Hash of the image pixels (with shape) and the encoder's identity."""
    arr = np.ascontiguousarray(images_uint8)
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    h.update(b"\0model\0")
    h.update(str(model_id).encode())
    return h.hexdigest()


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _key_path(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".key.json")


def cached_embeddings(
    encode_images: EncodeImages,
    images_uint8: np.ndarray,
    cache_path: str | os.PathLike,
    key: str,
    batch_size: int = 256,
) -> np.ndarray:
    """Image embeddings, computed once and reused while images and model match.

    ``key`` identifies the encoder (model name and weights, e.g.
    ``"ViT-B-32/openai"`` or a hash of the world CLIP's weights); the hash of
    the images is added here (:func:`embedding_cache_key`). The embeddings go
    to ``cache_path`` (``.npy``) and the key to ``<cache_path>.key.json``; both
    are written atomically, the key last, so a crash never leaves a key that
    vouches for the wrong array.
    """
    images = _check_images(images_uint8)
    cache_path = Path(cache_path)
    key_path = _key_path(cache_path)
    full_key = embedding_cache_key(images, key)

    if cache_path.is_file() and key_path.is_file():
        try:
            meta = json.loads(key_path.read_text())
            if meta.get("key") == full_key:
                with cache_path.open("rb") as fh:
                    emb = np.load(fh, allow_pickle=False)
                if emb.ndim == 2 and len(emb) == len(images) and np.all(np.isfinite(emb)):
                    logger.info("reusing cached embeddings %s", cache_path)
                    return emb.astype(np.float32, copy=False)
                logger.warning("cached embeddings %s have the wrong shape; recomputing", cache_path)
        except (OSError, ValueError) as exc:
            logger.warning("cannot read embedding cache %s (%s); recomputing", cache_path, exc)

    emb = image_embeddings(encode_images, images, batch_size=batch_size)
    key_path.unlink(missing_ok=True)  # invalidate before replacing the array
    _atomic_write_bytes(cache_path, lambda fh: np.save(fh, emb, allow_pickle=False))
    meta = {"key": full_key, "model": str(key), "n": int(len(emb)), "dim": int(emb.shape[1])}
    _atomic_write_bytes(key_path, lambda fh: fh.write(json.dumps(meta, indent=2).encode()))
    return emb


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------


def _check_scores(names: Sequence[str], scores: Any, what: str = "scores") -> np.ndarray:
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
    arr = _check_scores(names, scores)
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
    arr = _check_scores(names, scores)
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


# --------------------------------------------------------------------------
# Contact sheets (pure PIL)
# --------------------------------------------------------------------------

_PAD = 3
_BG = (255, 255, 255)
_FG = (20, 20, 20)
_PANEL_GAP = 10


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=10)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError):  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def _text_size(text: str) -> tuple[int, int]:
    left, top, right, bottom = _font().getbbox(text or " ")
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom - min(top, 0)))


@lru_cache(maxsize=1)
def _line_height() -> int:
    return _text_size("Ag|")[1] + 2


def _fit(text: str, width: int) -> str:
    if _text_size(text)[0] <= width:
        return text
    while text and _text_size(text + "..")[0] > width:
        text = text[:-1]
    return text + ".." if text else ""


def _auto_scale(height: int) -> int:
    return max(1, 64 // max(1, height))


def contact_sheet(
    images_uint8: np.ndarray,
    labels: Sequence[str] | None = None,
    columns: int = 16,
    scale: int | None = 2,
    title: str | None = None,
) -> Image.Image:
    """A grid of images, each upscaled ``scale`` times with NEAREST.

    ``labels`` (one per image; ``"\\n"`` for several lines) are drawn under
    each image, truncated to its width. ``scale=None`` picks one so that
    cells are at least 64 px. An empty array gives a sheet saying "(none)".
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        if not (images.size == 0 and images.ndim >= 1):
            raise ValueError(f"contact_sheet expects uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}")
    n = len(images)
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")
    h, w = (int(images.shape[1]), int(images.shape[2])) if images.ndim == 4 else (32, 32)
    if scale is None:
        scale = _auto_scale(h)
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    cw, ch = w * scale, h * scale
    line_h = _line_height()
    label_lines = max((len(str(lab).split("\n")) for lab in labels), default=0) if labels is not None else 0
    label_h = label_lines * line_h + (2 if label_lines else 0)
    title_h = line_h + 2 * _PAD if title else 0

    cols = min(int(columns), max(n, 1))
    rows = math.ceil(n / cols) if n else 1
    width = max(_PAD + cols * (cw + _PAD), (_text_size(title)[0] + 2 * _PAD) if title else 0)
    height = title_h + _PAD + rows * (ch + label_h + _PAD)
    sheet = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    if title:
        draw.text((_PAD, _PAD), title, fill=_FG, font=font)
    if n == 0:
        draw.text((_PAD, title_h + _PAD), "(none)", fill=_FG, font=font)
        return sheet
    for k in range(n):
        r, c = divmod(k, cols)
        x = _PAD + c * (cw + _PAD)
        y = title_h + _PAD + r * (ch + label_h + _PAD)
        tile = Image.fromarray(np.ascontiguousarray(images[k]))
        if scale != 1:
            tile = tile.resize((cw, ch), Image.Resampling.NEAREST)
        sheet.paste(tile, (x, y))
        if labels is not None:
            for j, line in enumerate(str(labels[k]).split("\n")):
                draw.text((x, y + ch + 1 + j * line_h), _fit(line, cw), fill=_FG, font=font)
    return sheet


def _spread(indices: np.ndarray, k: int, scores: np.ndarray | None, descending: bool) -> np.ndarray:
    """Up to ``k`` of ``indices``, evenly spread over their score order (or index order)."""
    if scores is not None:
        order = np.argsort(scores[indices], kind="stable")
        indices = indices[order[::-1]] if descending else indices[order]
    if len(indices) <= k:
        return indices
    picks = np.unique(np.linspace(0, len(indices) - 1, k).round().astype(np.int64))
    return indices[picks]


def curation_contact_sheet(
    images: np.ndarray,
    kept_idx: Sequence[int],
    dropped_idx: Sequence[int],
    max_each: int = 64,
    *,
    names: Sequence[str] | None = None,
    scores: Any = None,
    tags: Mapping[int, str] | None = None,
    labels: Sequence[str] | None = None,
    columns: int = 16,
    scale: int | None = None,
    title: str | None = None,
) -> Image.Image:
    """Two labelled panels, kept above dropped, of at most ``max_each`` images each.

    With more images than ``max_each``, an even spread over the score order
    (highest first) is shown, so both extremes and the borderline appear.
    Each image is labelled with its name and score when given, plus
    ``tags[i]`` (e.g. "excluded") for the images in ``tags``. ``labels`` (one
    per image in ``images``) replaces the name/score lines when given.
    """
    images = np.asarray(images)
    if isinstance(max_each, bool) or not isinstance(max_each, (int, np.integer)) or max_each < 1:
        raise ValueError(f"max_each must be a positive integer, got {max_each!r}")
    kept = np.asarray(kept_idx, dtype=np.int64).reshape(-1)
    dropped = np.asarray(dropped_idx, dtype=np.int64).reshape(-1)
    for what, idx in (("kept_idx", kept), ("dropped_idx", dropped)):
        if len(idx) and (idx.min() < 0 or idx.max() >= len(images)):
            raise ValueError(f"{what} out of range for {len(images)} images")
    sc = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if sc is not None and len(sc) != len(images):
        raise ValueError(f"{len(sc)} scores for {len(images)} images")
    if names is not None and len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")

    def label(i: int) -> str:
        parts = []
        if labels is not None:
            parts.append(str(labels[i]))
        elif names is not None:
            parts.append(str(names[i]))
        if sc is not None and labels is None:
            parts.append(f"{sc[i]:.3f}")
        if tags:
            parts.append(str(tags.get(i, "")))
        return "\n".join(parts)

    panels = []
    for what, idx in (("kept", kept), ("dropped", dropped)):
        shown = _spread(idx, int(max_each), sc, descending=True)
        caption = f"{what}: {len(idx)}" + (f" (showing {len(shown)})" if len(shown) < len(idx) else "")
        with_labels = names is not None or sc is not None or bool(tags) or labels is not None
        cell_labels = [label(int(i)) for i in shown] if with_labels else None
        panels.append(
            contact_sheet(images[shown] if len(shown) else images[:0], cell_labels, columns=columns,
                          scale=scale, title=caption)
        )
    title_h = (_line_height() + 2 * _PAD) if title else 0
    width = max(max(p.width for p in panels), (_text_size(title)[0] + 2 * _PAD) if title else 0)
    height = title_h + sum(p.height for p in panels) + _PANEL_GAP
    sheet = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((_PAD, _PAD), title, fill=_FG, font=_font())
    y = title_h
    sheet.paste(panels[0], (0, y))
    y += panels[0].height
    draw.line([(0, y + _PANEL_GAP // 2), (width, y + _PANEL_GAP // 2)], fill=(160, 160, 160), width=1)
    sheet.paste(panels[1], (0, y + _PANEL_GAP))
    return sheet
