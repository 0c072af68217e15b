"""CLIP embeddings and scores for curation, with an on-disk embedding cache.

Everything here works on plain arrays and callables, so that the world CLIP
(``conf/base``) and open_clip ViT-B/32 (``conf/paper``) plug in the same way:

- ``encode_images(x)`` takes ``float (B, 3, H, W)`` in ``[-1, 1]`` and returns
  L2-normalised embeddings ``(B, D)`` (tensor or array);
- ``encode_text(prompts)`` takes a list of strings and returns ``(P, D)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_write_file
from .images import to_tensor

logger = logging.getLogger(__name__)

EncodeImages = Callable[[torch.Tensor], Any]
EncodeText = Callable[[list[str]], Any]


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
    atomic_write_file(cache_path, lambda fh: np.save(fh, emb, allow_pickle=False))
    meta = {"key": full_key, "model": str(key), "n": int(len(emb)), "dim": int(emb.shape[1])}
    atomic_write_file(key_path, lambda fh: fh.write(json.dumps(meta, indent=2).encode()))
    return emb


__all__ = [
    "EncodeImages",
    "EncodeText",
    "cached_embeddings",
    "clip_scores",
    "embedding_cache_key",
    "image_embeddings",
    "scores_from_embeddings",
    "text_embeddings",
    "zero_shot_probabilities",
]
