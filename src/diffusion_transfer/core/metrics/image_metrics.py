"""Per-image PSNR and SSIM for translation faithfulness (input vs output).

Convention: inputs are float tensors (B, 3, H, W) or (3, H, W) in [-1, 1];
they are mapped to [0, 1] by (x + 1) / 2 and clamped, so the data range is 1.
Both metrics are computed on RGB (no conversion to luma) and returned per
image as a float64 tensor (B,).

- PSNR = 10 log10(1 / MSE), MSE over all channels and pixels; identical
  images give +inf.
- SSIM follows Wang et al. (2004): 11x11 Gaussian window with sigma 1.5,
  K1 = 0.01, K2 = 0.03, "valid" filtering (no padding), computed per channel
  and averaged over channels and positions (as ``skimage``'s
  ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)`` does, up to
  its border handling). For images smaller than 11 pixels the window shrinks
  to the largest odd size that fits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _prepare(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError("psnr/ssim take torch tensors in [-1, 1]")
    if a.ndim == 3:
        a = a.unsqueeze(0)
    if b.ndim == 3:
        b = b.unsqueeze(0)
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(
            f"psnr/ssim need two image batches of the same shape (B, C, H, W), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a = ((a.detach().to(torch.float64) + 1.0) / 2.0).clamp(0.0, 1.0)
    b = ((b.detach().to(torch.float64) + 1.0) / 2.0).clamp(0.0, 1.0)
    return a, b


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (B,), data range 1 after mapping [-1, 1] to [0, 1]."""
    a, b = _prepare(a, b)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)  # mse == 0 gives +inf


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (B,) on RGB in [0, 1] (see the module docstring)."""
    a, b = _prepare(a, b)
    _, c, h, w = a.shape
    size = min(window, h, w)
    if size % 2 == 0:
        size -= 1
    if size < 1:
        raise ValueError(f"images too small for SSIM: {h}x{w}")
    g = _gaussian_window(size, sigma, a.dtype, a.device)
    kh = g.view(1, 1, size, 1).expand(c, 1, size, 1)
    kw = g.view(1, 1, 1, size).expand(c, 1, 1, size)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)

    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(dim=1)


def psnr_to_mse(value: float) -> float:
    """Inverse of PSNR with data range 1 (handy in tests and reports)."""
    return math.pow(10.0, -value / 10.0)
