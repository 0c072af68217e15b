"""FID and KID from feature sets, equal to clean-fid's ``frechet_distance``
and ``kernel_distance`` (``cleanfid.fid``) up to floating-point rounding, but
without their cubic costs in the feature dimension or the subset count.

Fréchet distance of Gaussians fitted to two feature sets (N, D):

    FID = ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)

With A = (F1 - mu1) / sqrt(n1 - 1) and B likewise (so S1 = A^T A, S2 = B^T B),
the non-zero eigenvalues of S1 S2 = A^T (A B^T) B are those of
(A B^T)(A B^T)^T, the squared singular values of the n1 x n2 matrix A B^T, so

    tr sqrt(S1 S2) = sum of the singular values of A B^T   (its nuclear norm)

exactly. With fewer samples than dimensions (256 samples, 1,000 references,
2048-d Inception) that is an SVD of a 256 x 1000 matrix instead of clean-fid's
``scipy.linalg.sqrtm`` of a 2048 x 2048 product; when both sets have more
samples than dimensions, the full form (clean-fid's own function) is the
smaller problem and is used.

KID (clean-fid): the unbiased MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3,
averaged over ``num_subsets`` random subsets of m = min(n1, n2, 1000). The
kernel matrices of the whole sets are computed once and each subset indexes
them; the subsets are clean-fid's own draws (``np.random.choice`` without
replacement, second set first) from a ``RandomState(seed)``.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np

__all__ = ["check_features", "fid_from_features", "frechet_distance", "kid_from_features"]

#: Above this many kernel-matrix entries (8 bytes each) KID runs clean-fid's
#: per-subset loop instead of holding the full kernel matrices.
MAX_KERNEL_ENTRIES = 40_000_000


def check_features(f1: np.ndarray, f2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets as float64 (N, D); errors name the bad set."""
    f1 = np.asarray(f1, dtype=np.float64)
    f2 = np.asarray(f2, dtype=np.float64)
    for name, f in (("first", f1), ("second", f2)):
        if f.ndim != 2:
            raise ValueError(f"features must be 2-D (N, D); the {name} set has shape {f.shape}")
        if f.shape[0] < 2:
            raise ValueError(
                f"FID/KID need at least 2 images per set; the {name} set has {f.shape[0]}"
            )
        if not np.isfinite(f).all():
            raise ValueError(f"the {name} feature set contains non-finite values")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    return f1, f2


def _full_frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    sigma1, sigma2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # clean-fid prints when it adds eps to a singular product
        value = float(cleanfid_frechet(mu1, sigma1, mu2, sigma2))
    if buf.getvalue().strip():
        warnings.warn(f"clean-fid: {buf.getvalue().strip()}", RuntimeWarning, stacklevel=3)
    return value


def _low_rank_frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a = (f1 - mu1) / np.sqrt(f1.shape[0] - 1)
    b = (f2 - mu2) / np.sqrt(f2.shape[0] - 1)
    trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.einsum("ij,ij->", a, a) + np.einsum("ij,ij->", b, b) - 2 * trace_sqrt)


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """The Fréchet distance of the two feature sets' Gaussians: the low-rank
    form when the smaller set has at most D samples, clean-fid's full form
    otherwise. Not clamped (tiny negative values are rounding)."""
    f1, f2 = check_features(f1, f2)
    if min(f1.shape[0], f2.shape[0]) <= f1.shape[1]:
        return _low_rank_frechet(f1, f2)
    return _full_frechet(f1, f2)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets (N, D), as ``cleanfid.fid.frechet_distance``
    of their means and covariances (see :func:`frechet_distance`). Tiny
    negative values from rounding are reported as 0."""
    return max(frechet_distance(f1, f2), 0.0)


def _cleanfid_kid(f1: np.ndarray, f2: np.ndarray, num_subsets: int, max_subset_size: int, seed: int) -> float:
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()  # clean-fid draws from the global RNG: seeded here, restored after
    try:
        np.random.seed(seed)
        return float(kernel_distance(f1, f2, num_subsets=num_subsets, max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)


def kid_from_features(
    f1: np.ndarray,
    f2: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """Kernel Inception Distance, as ``cleanfid.fid.kernel_distance`` with
    numpy's global RNG seeded with ``seed`` (which is left untouched here).
    KID is unbiased, so it can be slightly negative for two samples of one
    distribution."""
    f1, f2 = check_features(f1, f2)
    n1, n2, dim = f1.shape[0], f2.shape[0], f1.shape[1]
    if n1 * n1 + n2 * n2 + n1 * n2 > MAX_KERNEL_ENTRIES:
        return _cleanfid_kid(f1, f2, num_subsets, max_subset_size, seed)
    m = min(n1, n2, max_subset_size)
    k22 = (f2 @ f2.T / dim + 1) ** 3  # clean-fid's x: the second set
    k11 = (f1 @ f1.T / dim + 1) ** 3
    k21 = (f2 @ f1.T / dim + 1) ** 3
    rng = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        ix = rng.choice(n2, m, replace=False)
        iy = rng.choice(n1, m, replace=False)
        within = k22[np.ix_(ix, ix)].sum() - k22[ix, ix].sum() + k11[np.ix_(iy, iy)].sum() - k11[iy, iy].sum()
        total += within / (m - 1) - k21[np.ix_(ix, iy)].sum() * 2 / m
    return float(total / num_subsets / m)
