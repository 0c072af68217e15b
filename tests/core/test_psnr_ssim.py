"""PSNR and SSIM of images in [-1, 1]: identical images, known offsets and
noise, and SSIM against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_transfer.core.metrics import psnr, ssim


def test_psnr_identical_and_constant_offset():
    a = torch.rand((2, 3, 16, 16), generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    assert torch.isinf(psnr(a, a)).all()
    # An offset of 0.1 in [-1, 1] is 0.05 in [0, 1]: MSE = 0.0025, PSNR = 10 log10(400).
    got = psnr(a, a + 0.1)
    assert got.shape == (2,)
    assert torch.allclose(got, torch.full((2,), 10 * math.log10(400.0), dtype=torch.float64), atol=1e-6)
    assert psnr(a[0], a[0] + 0.1).shape == (1,)  # a single (3, H, W) image


def test_ssim_identical_is_one_and_drops_with_noise():
    g = torch.Generator().manual_seed(1)
    a = torch.rand((2, 3, 32, 32), generator=g) * 2 - 1
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))
    noisy = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    s = ssim(a, noisy)
    assert (s < 0.95).all() and (s > -1).all()
    assert (ssim(a, (a + 0.05).clamp(-1, 1)) > s).all()
    small = torch.zeros(1, 3, 6, 6)
    assert ssim(small, small).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        ssim(a, a[:1])


def test_ssim_against_hand_computed_values():
    """Constant images: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    An 11x11 image is one Gaussian window: the weighted statistics by hand."""
    c1, c2 = 0.01**2, 0.03**2
    a, b = torch.full((1, 3, 16, 16), -0.2), torch.full((1, 3, 16, 16), 0.6)  # 0.4 and 0.8 in [0, 1]
    expected = (2 * 0.4 * 0.8 + c1) / (0.4**2 + 0.8**2 + c1)
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-6)  # float32 inputs

    g = torch.Generator().manual_seed(4)
    x, y = torch.rand((1, 3, 11, 11), generator=g) * 2 - 1, torch.rand((1, 3, 11, 11), generator=g) * 2 - 1
    coords = torch.arange(11, dtype=torch.float64) - 5
    w1 = torch.exp(-coords**2 / (2 * 1.5**2))
    w = torch.outer(w1, w1) / torch.outer(w1, w1).sum()
    per_channel = []
    for ch in range(3):
        p, q = (x[0, ch].double() + 1) / 2, (y[0, ch].double() + 1) / 2
        mp, mq = (w * p).sum(), (w * q).sum()
        vp, vq = (w * p * p).sum() - mp**2, (w * q * q).sum() - mq**2
        cov = (w * p * q).sum() - mp * mq
        per_channel.append(((2 * mp * mq + c1) * (2 * cov + c2) / ((mp**2 + mq**2 + c1) * (vp + vq + c2))).item())
    assert ssim(x, y).item() == pytest.approx(sum(per_channel) / 3, rel=1e-9)
