"""The low-pass filters phi_N of ILVR and EGSDE: downsample by N, upsample by N.

Three filters, selected by name (``translation.{ilvr,egsde}.filter``):

- ``block``: mean over N x N blocks, then nearest upsampling. A projection
  (phi(phi(x)) = phi(x)); the project's reading of the papers' "sequence of
  downsampling and upsampling" (ILVR Eq. 8 text; EGSDE section 3.2).
- ``cubic``: what ILVR's released code (jychoi118/ilvr_adm, ``resizer.py``) runs:
  Shocher's ``Resizer``, MATLAB ``imresize`` semantics, cubic kernel,
  antialiased when downscaling.
- ``linear``: the same resizer with the linear (triangle) kernel, EGSDE's
  released default (ML-GSAI/EGSDE, ``functions/resizer.py``).

The resizer, re-derived here from its formulas for one dimension of length n
resized by the scale s to m = n s pixels:

    u_o    = o / s + (1 - 1/s) / 2                  (1-based output pixel o, input coordinates)
    w_oj   = k_s(u_o - j) / sum_j' k_s(u_o - j')    (1-based input pixel j)
    k_s(x) = s k(s x)  when s < 1 (antialiasing: the kernel stretched by 1/s), else k(x)
    cubic:  k(x) = 1.5|x|^3 - 2.5|x|^2 + 1  (|x| <= 1),  -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2  (1 < |x| <= 2)
    linear: k(x) = 1 - |x|  (|x| <= 1)

Input pixels outside [1, n] are reflected with the edge pixel repeated
(j = 0 is pixel 1, j = n + 1 is pixel n). The filter is the matrix
M = U D (n x n) per image axis, applied as M_H x M_W^T to every channel;
the two axes are independent, so the order the released code resizes them in
does not matter. Unlike ``block``, M is not a projection.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

LOW_PASS_FILTERS = ("block", "cubic", "linear")

__all__ = ["LOW_PASS_FILTERS", "filter_matrix", "resize_matrix", "resizer_low_pass"]


def _cubic(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    return np.where(a <= 1, 1.5 * a**3 - 2.5 * a**2 + 1, np.where(a <= 2, -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2, 0.0))


def _linear(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


_KERNELS = {"cubic": (_cubic, 4.0), "linear": (_linear, 2.0)}


def _reflect(j: int, n: int) -> int:
    """0-based index of 1-based position j after symmetric reflection."""
    i = (j - 1) % (2 * n)
    return i if i < n else 2 * n - 1 - i


@functools.lru_cache(maxsize=64)
def resize_matrix(n: int, m: int, kernel: str) -> np.ndarray:
    """The (m, n) float64 matrix that resizes a length-n signal to length m
    (scale s = m / n) with ``kernel`` ("cubic" | "linear")."""
    if kernel not in _KERNELS:
        raise ValueError(f"resizer kernel must be one of {sorted(_KERNELS)}, got {kernel!r}")
    k, width = _KERNELS[kernel]
    s = m / n
    if s < 1:  # antialiasing: widen the kernel to the output's pixel size
        width = width / s
        kern = lambda x: s * k(s * x)  # noqa: E731
    else:
        kern = k
    out = np.zeros((m, n))
    for o in range(1, m + 1):
        u = o / s + 0.5 * (1.0 - 1.0 / s)
        js = np.arange(math.floor(u - width / 2) - 1, math.ceil(u + width / 2) + 2)
        w = kern(u - js)
        total = w.sum()
        w = w / (total if total != 0 else 1.0)
        for j, wj in zip(js, w):
            out[o - 1, _reflect(int(j), n)] += wj
    return out


@functools.lru_cache(maxsize=64)
def filter_matrix(n: int, factor: int, kernel: str) -> np.ndarray:
    """phi_N along one axis of length n: up(down(.)) as one (n, n) matrix."""
    down = resize_matrix(n, n // factor, kernel)
    up = resize_matrix(n // factor, n, kernel)
    return up @ down


def resizer_low_pass(x: torch.Tensor, factor: int, kernel: str) -> torch.Tensor:
    """phi_N(x) with the released code's resizer (``kernel`` "cubic" or "linear")
    on a (B, C, H, W) batch; differentiable in ``x``."""
    h, w = x.shape[-2:]
    mh = torch.from_numpy(filter_matrix(h, factor, kernel)).to(device=x.device, dtype=x.dtype)
    mw = mh if w == h else torch.from_numpy(filter_matrix(w, factor, kernel)).to(device=x.device, dtype=x.dtype)
    return torch.matmul(torch.matmul(mh, x), mw.transpose(0, 1))


def block_low_pass(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Block mean over factor x factor, then nearest upsampling."""
    return F.interpolate(F.avg_pool2d(x, factor), scale_factor=factor, mode="nearest")
