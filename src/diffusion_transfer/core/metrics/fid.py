"""FID and KID in one call, over a configurable feature extractor that records
which weights it ran on.

clean-fid (Parmar et al.) computes FID as ``cleanfid.fid.frechet_distance``
on the mean and covariance of Inception-v3 pool3 features, and KID as
``cleanfid.fid.kernel_distance`` (cubic polynomial kernel MMD, 100 subsets of
at most 1000). The pieces live by role:

- :mod:`.features`: :class:`FeatureExtractor`, batched extraction and the
  feature cache (``.npy`` keyed by a hash of the images and the weights);
- :mod:`.extractors`: the real Inception-v3 (clean-fid's "clean" mode, found
  offline) and the labelled CLIP substitute;
- :mod:`.distances`: FID and KID from features, equal to clean-fid's
  functions (a low-rank Fréchet distance when samples are fewer than
  dimensions, KID from kernel matrices computed once).

Every name is re-exported here, where callers have always imported them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffusion_transfer.core.metrics.distances import (
    check_features,
    fid_from_features,
    frechet_distance,
    kid_from_features,
)
from diffusion_transfer.core.metrics.extractors import (
    FID_HELPER_DEFAULT_1_SHA1,
    INCEPTION_DIM,
    INCEPTION_ENV_VAR,
    InceptionWeightsNotFound,
    clip_extractor,
    inception_extractor,
    resolve_inception_path,
)
from diffusion_transfer.core.metrics.features import (
    FeatureExtractor,
    cached_features,
    check_images,
    extract_features,
    feature_cache_key,
    reference_cache_key,
)

__all__ = [
    "FID_HELPER_DEFAULT_1_SHA1", "INCEPTION_DIM", "INCEPTION_ENV_VAR", "FeatureExtractor", "InceptionWeightsNotFound",
    "cached_features", "check_features", "check_images", "clip_extractor", "compute_fid_kid", "extract_features",
    "feature_cache_key", "fid_from_features", "frechet_distance", "inception_extractor", "kid_from_features",
    "reference_cache_key", "resolve_inception_path",
]


def compute_fid_kid(
    gen_uint8: np.ndarray,
    ref_uint8: np.ndarray,
    extractor: FeatureExtractor,
    ref_cache: Path | None = None,
    batch_size: int = 64,
    cache_generated: bool = True,
) -> dict[str, Any]:
    """FID and KID of generated images against reference images (both uint8
    (N, H, W, 3)). ``ref_cache`` is a directory where features are kept
    (``ref_<name>_<hash>.npy`` for the reference set, ``gen_<name>_<hash>.npy``
    for the generated one unless ``cache_generated`` is false, so the same
    samples scored again, e.g. the source model's samples for every method, are
    not run through the network again); ``None`` disables caching.

    Returns ``dict(fid, kid, kid_x1e3, n_gen, n_ref, features, weights)``.
    """
    gen = check_images(gen_uint8, "gen_uint8")
    ref = check_images(ref_uint8, "ref_uint8")
    for what, arr in (("generated", gen), ("reference", ref)):
        if arr.shape[0] < 2:
            raise ValueError(f"FID/KID need at least 2 {what} images, got {arr.shape[0]}")
    ref_feats = cached_features(extractor, ref, ref_cache, batch_size, prefix="ref")
    gen_feats = cached_features(extractor, gen, ref_cache if cache_generated else None, batch_size, prefix="gen")
    kid = kid_from_features(gen_feats, ref_feats)
    return {
        "fid": fid_from_features(gen_feats, ref_feats),
        "kid": kid,
        "kid_x1e3": kid * 1e3,
        "n_gen": int(gen.shape[0]),
        "n_ref": int(ref.shape[0]),
        "features": extractor.name,
        "weights": extractor.weights,
    }
