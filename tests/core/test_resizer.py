"""The low-pass filters phi_N against values worked out by hand from the
released resizer's formulas (jychoi118/ilvr_adm and ML-GSAI/EGSDE
``resizer.py``): u_o = o / s + (1 - 1/s) / 2, w_oj = k_s(u_o - j) normalised,
k_s(x) = s k(s x) when downscaling, edge pixels mirrored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_transfer.core.translation import low_pass
from diffusion_transfer.core.translation.resizer import filter_matrix, resize_matrix

# linear kernel, 4 pixels down by 2 (s = 1/2, width 4, k_s(x) = (1 - |x|/2) / 2):
# o = 1 at u = 1.5 sees j = 0..3 at distances 1.5, 0.5, -0.5, -1.5 -> 1/8, 3/8, 3/8, 1/8;
# j = 0 mirrors onto pixel 1. o = 2 at u = 3.5 likewise, j = 5 mirrors onto pixel 4.
LINEAR_DOWN = np.array([[0.5, 0.375, 0.125, 0.0],
                        [0.0, 0.125, 0.375, 0.5]])
# 2 pixels up by 2 (s = 2, plain triangle): u = 0.75, 1.25, 1.75, 2.25.
LINEAR_UP = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
LINEAR_PHI = LINEAR_UP @ LINEAR_DOWN  # rows [.5 .375 .125 0], [.375 .3125 .1875 .125], ...


def test_linear_resizer_matrices_by_hand():
    np.testing.assert_allclose(resize_matrix(4, 2, "linear"), LINEAR_DOWN, atol=1e-12)
    np.testing.assert_allclose(resize_matrix(2, 4, "linear"), LINEAR_UP, atol=1e-12)
    np.testing.assert_allclose(filter_matrix(4, 2, "linear")[1], [0.375, 0.3125, 0.1875, 0.125], atol=1e-12)


def test_cubic_resizer_down_row_by_hand():
    # cubic, s = 1/2: k_s(x) = cubic(x / 2) / 2 over |x| < 4. o = 1, u = 1.5: j = -2..5 at
    # distances 3.5 .. -3.5 -> cubic(1.75, 1.25, 0.75, 0.25) / 2 = -0.01171875, -0.03515625,
    # 0.11328125, 0.43359375 (then mirrored). Mirroring folds j = 0, -1, -2 onto pixels 1, 2, 3
    # and j = 5 onto pixel 4.
    c = [-0.01171875, -0.03515625, 0.11328125, 0.43359375]
    row = [c[2] + c[3], c[1] + c[3], c[0] + c[2], c[1] + c[0]]  # 0.546875, 0.3984375, 0.1015625, -0.046875
    np.testing.assert_allclose(resize_matrix(4, 2, "cubic")[0], row, atol=1e-12)
    assert resize_matrix(4, 2, "cubic")[0].sum() == pytest.approx(1.0)
    # upscaling by 2 is not antialiased: cubic at distances 1.25, 0.25, 0.75, 1.75 for o = 2 (u = 1.25)
    up = resize_matrix(2, 4, "cubic")
    w = np.array([-0.0703125, 0.8671875, 0.2265625, -0.0234375])  # j = 0, 1, 2, 3 -> pixels 1, 1, 2, 2
    np.testing.assert_allclose(up[1], [w[0] + w[1], w[2] + w[3]], atol=1e-12)


def test_filters_on_a_known_image():
    # one bright pixel in a corner: phi = M e1 e1^T M^T per channel, an outer product of column 1
    x = torch.zeros(1, 3, 4, 4)
    x[:, :, 0, 0] = 1.0
    col = torch.tensor(LINEAR_PHI[:, 0], dtype=torch.float32)
    torch.testing.assert_close(low_pass(x, 2, "linear"), (col[:, None] * col[None, :]).expand(1, 3, 4, 4))
    # block: the 2x2 block mean (1/4) repeated over its block
    want = torch.zeros(1, 3, 4, 4)
    want[:, :, :2, :2] = 0.25
    torch.testing.assert_close(low_pass(x, 2, "block"), want)
    # a constant image passes every filter unchanged (rows sum to 1)
    flat = torch.full((2, 3, 8, 8), 0.3)
    for kind in ("block", "cubic", "linear"):
        torch.testing.assert_close(low_pass(flat, 4, kind), flat)


def test_resizer_filters_are_separable_and_not_projections():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    m = torch.tensor(filter_matrix(8, 2, "cubic"), dtype=torch.float32)
    torch.testing.assert_close(low_pass(x, 2, "cubic"), m @ x @ m.T)
    assert not torch.allclose(low_pass(low_pass(x, 2, "cubic"), 2, "cubic"), low_pass(x, 2, "cubic"), atol=1e-3)
    torch.testing.assert_close(low_pass(low_pass(x, 2, "block"), 2, "block"), low_pass(x, 2, "block"))
    # the filters differ by more than rounding on a [-1, 1] image
    assert float((low_pass(x, 4, "cubic") - low_pass(x, 4, "block")).abs().max()) > 0.05


def test_bad_filter_names_the_choices():
    with pytest.raises(ValueError, match="block"):
        low_pass(torch.zeros(1, 3, 4, 4), 2, "lanczos")
