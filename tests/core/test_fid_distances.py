"""FID and KID from features equal clean-fid's ``frechet_distance`` and
``kernel_distance`` (cleanfid.fid) within 1e-4 relative: the low-rank Fréchet
form (fewer samples than dimensions), the full form (more), and KID from
kernel matrices computed once."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from cleanfid.fid import frechet_distance as cleanfid_frechet
from cleanfid.fid import kernel_distance as cleanfid_kernel

from diffusion_transfer.core.metrics import distances
from diffusion_transfer.core.metrics.distances import fid_from_features, frechet_distance, kid_from_features

REL = 1e-4


def features(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Non-negative, correlated features like Inception pool3 (ReLU of a
    random low-rank mixture plus noise), so the covariances are not diagonal."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(min(dim, 12), dim))
    mixed = rng.normal(size=(n, basis.shape[0])) @ basis + 0.3 * rng.normal(size=(n, dim))
    return np.maximum(mixed + shift, 0.0)


def cleanfid_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    with contextlib.redirect_stdout(io.StringIO()):  # its note when it adds eps to a singular product
        return float(cleanfid_frechet(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)))


def cleanfid_kid(f1: np.ndarray, f2: np.ndarray, seed: int = 0, **kw) -> float:
    np.random.seed(seed)
    return float(cleanfid_kernel(f1, f2, **kw))


@pytest.mark.parametrize("n1, n2, dim", [
    (5, 7, 16),       # both far below the dimension
    (20, 50, 64),
    (64, 64, 64),     # n = dim: still the low-rank form
    (30, 300, 48),    # the larger set above the dimension, the smaller below
    (300, 30, 48),
])
def test_low_rank_frechet_equals_cleanfid(n1, n2, dim, monkeypatch):
    f1, f2 = features(n1, dim, 1), features(n2, dim, 2, shift=0.4)
    used = []
    monkeypatch.setattr(distances, "_full_frechet", lambda *a: used.append("full"))
    ours = frechet_distance(f1, f2)
    assert used == []  # the low-rank form ran
    expected = cleanfid_fid(f1, f2)
    assert expected > 1.0
    assert ours == pytest.approx(expected, rel=REL)


def test_full_form_when_both_sets_exceed_the_dimension(monkeypatch):
    # n > 2048 (and > dim): clean-fid's sqrtm form, its own function.
    f1, f2 = features(2100, 24, 3), features(2300, 24, 4, shift=0.2)
    monkeypatch.setattr(distances, "_low_rank_frechet", lambda *a: pytest.fail("low-rank form used"))
    expected = cleanfid_fid(f1, f2)
    assert frechet_distance(f1, f2) == expected
    monkeypatch.undo()
    # The low-rank identity holds there too (a smaller case: its SVD grows as n^3).
    g1, g2 = features(90, 24, 3), features(120, 24, 4, shift=0.2)
    assert distances._low_rank_frechet(g1, g2) == pytest.approx(cleanfid_fid(g1, g2), rel=REL)


def test_low_rank_identity_by_hand():
    # tr sqrt(S1 S2) is the nuclear norm of A B^T: check on a 2-d example with
    # covariances diag(4, 1) and diag(1, 9), where sqrt(S1 S2) = diag(2, 3).
    f1 = np.array([[2.0, 0], [-2, 0], [0, 1], [0, -1]]) * np.sqrt(3 / 2)  # cov = diag(4, 1)
    f2 = np.array([[1.0, 0], [-1, 0], [0, 3], [0, -3]]) * np.sqrt(3 / 2) + 5.0  # cov = diag(1, 9), mean (5, 5)
    assert np.allclose(np.cov(f1, rowvar=False), np.diag([4.0, 1.0]))
    assert np.allclose(np.cov(f2, rowvar=False), np.diag([1.0, 9.0]))
    # ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2) = 50 + 5 + 10 - 2 * 5
    assert distances._low_rank_frechet(f1, f2) == pytest.approx(55.0, abs=1e-9)
    assert fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
def test_low_rank_frechet_equals_cleanfid_at_inception_size():
    # 2048-d, 100 samples against 150: clean-fid's sqrtm of a 2048 x 2048
    # product (seconds) against an SVD of a 100 x 150 matrix.
    f1, f2 = features(100, 2048, 5), features(150, 2048, 6, shift=0.1)
    assert frechet_distance(f1, f2) == pytest.approx(cleanfid_fid(f1, f2), rel=REL)


@pytest.mark.parametrize("n1, n2, dim, kw", [
    (40, 60, 16, {}),                                                 # m = 40: every f1 row, shuffled
    (120, 90, 32, {"num_subsets": 30, "max_subset_size": 50}),       # subsets smaller than both sets
    (120, 150, 2048, {"num_subsets": 10, "max_subset_size": 60}),    # Inception's dimension
])
def test_kid_equals_cleanfid(n1, n2, dim, kw):
    f1, f2 = features(n1, dim, 7), features(n2, dim, 8, shift=0.1)
    for seed in (0, 3):
        expected = cleanfid_kid(f1, f2, seed=seed, **kw)
        np.random.seed(11)
        ours = kid_from_features(f1, f2, seed=seed, **kw)
        assert np.random.rand() == np.random.RandomState(11).rand()  # the global RNG untouched
        assert ours == pytest.approx(expected, rel=REL)
    assert kid_from_features(f1, f2, seed=0, **kw) != kid_from_features(f1, f2, seed=3, **kw)


def test_kid_falls_back_to_cleanfid_for_large_sets(monkeypatch):
    f1, f2 = features(50, 8, 9), features(40, 8, 10, shift=0.3)
    monkeypatch.setattr(distances, "MAX_KERNEL_ENTRIES", 0)
    assert kid_from_features(f1, f2, num_subsets=5) == cleanfid_kid(f1, f2, num_subsets=5)
