"""Image features for FID/KID: the :class:`FeatureExtractor` record, batched
extraction, and the on-disk feature cache.

Features are cached as ``.npy`` keyed by a sha256 of the images (shape, dtype
and bytes) and the extractor's name and weights label, so any set of images
(the reference set, a model's samples, a translation) is run through a network
once per weights, across nodes, pipelines and re-runs. Files are written
atomically; an unreadable one is recomputed.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion_transfer.core.io import atomic_path


@dataclass(frozen=True)
class FeatureExtractor:
    """A named image-feature function for FID/KID.

    ``fn`` takes a uint8 tensor (B, 3, H, W) with values 0..255 and returns
    float features (B, D); it does its own resizing and normalisation.
    ``weights`` says in words which weights it runs on, for the report.
    """

    name: str
    weights: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    is_inception: bool = False


def check_images(images: Any, what: str) -> np.ndarray:
    """``images`` itself when it is a uint8 array (N, H, W, 3); else an error naming ``what``."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{what} must be a numpy array (N, H, W, 3) of uint8, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{what} must have shape (N, H, W, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (0..255), got dtype {images.dtype}")
    return images


def extract_features(
    extractor: FeatureExtractor, images_uint8: np.ndarray, batch_size: int = 64, desc: str | None = None
) -> np.ndarray:
    """Features (N, D) float64 of uint8 images (N, H, W, 3); ``desc`` labels
    a progress bar over the batches (none when ``None``)."""
    images = check_images(images_uint8, "images_uint8")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    feats: list[np.ndarray] = []
    starts = range(0, images.shape[0], batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None or len(starts) < 2, leave=False):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            out = extractor.fn(batch.permute(0, 3, 1, 2).contiguous())
            out = torch.as_tensor(out).detach().to("cpu", torch.float64)
            if out.ndim != 2 or out.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"feature extractor {extractor.name!r} returned shape {tuple(out.shape)} "
                    f"for a batch of {batch.shape[0]} images; expected (B, D)"
                )
            feats.append(out.numpy())
    if not feats:
        return np.zeros((0, 0), dtype=np.float64)
    return np.concatenate(feats, axis=0)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:48] or "features"


def feature_cache_key(images_uint8: np.ndarray, extractor: FeatureExtractor) -> str:
    """sha256 over the images (shape and bytes) and the extractor's name and
    weights label."""
    h = hashlib.sha256()
    h.update(repr((images_uint8.shape, str(images_uint8.dtype))).encode())
    h.update(np.ascontiguousarray(images_uint8).data)
    h.update(b"\0" + extractor.name.encode() + b"\0" + extractor.weights.encode())
    return h.hexdigest()


#: The name the reference cache used first; same key for any image set.
reference_cache_key = feature_cache_key


def feature_cache_path(cache_dir: Path, images_uint8: np.ndarray, extractor: FeatureExtractor,
                       prefix: str) -> Path:
    """``<cache_dir>/<prefix>_<extractor>_<key>.npy``; ``prefix`` only
    says what the images were (``ref``, ``gen``), the key alone identifies them."""
    return Path(cache_dir) / f"{prefix}_{_slug(extractor.name)}_{feature_cache_key(images_uint8, extractor)[:24]}.npy"


def cached_features(extractor: FeatureExtractor, images_uint8: np.ndarray, cache_dir: Path | None,
                    batch_size: int = 64, prefix: str = "gen") -> np.ndarray:
    """:func:`extract_features`, read from / written to ``cache_dir`` (no
    cache when it is ``None``)."""
    desc = f"{extractor.name} features ({prefix}, {images_uint8.shape[0]} images)"
    if cache_dir is None:
        return extract_features(extractor, images_uint8, batch_size, desc)
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ValueError(f"the feature cache must be a directory, got the file {cache_dir}")
    path = feature_cache_path(cache_dir, images_uint8, extractor, prefix)
    if path.exists():
        try:
            feats = np.load(path, allow_pickle=False)
            if feats.ndim == 2 and feats.shape[0] == images_uint8.shape[0]:
                return feats
        except (OSError, ValueError):
            pass  # corrupt cache file: recompute and overwrite
        warnings.warn(f"ignoring unreadable feature cache {path}", RuntimeWarning, stacklevel=3)
    feats = extract_features(extractor, images_uint8, batch_size, desc)
    with atomic_path(path, ".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, feats, allow_pickle=False)
    return feats
