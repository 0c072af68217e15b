"""Pretrained weights by local path or by release id.

Metric and model weights (clean-fid's Inception, the LPIPS backbones, the
ArcFace identity network) are configured by a *spec*:

- a path to a local file: used as is, never copied;
- the id of a known release (:data:`RELEASES`, e.g. ``alexnet`` or
  ``arcface-ir-se50``), or a direct ``https://`` URL: the file is looked up in
  the weights cache and, if absent and the machine is online, downloaded
  there from its usual source (atomically: a partial download never looks
  like a file).

Offline (``HF_HUB_OFFLINE=1`` or ``DT_OFFLINE=1``) nothing is downloaded:
:func:`missing_weights` says what is missing and where it comes from, so the
pre-run check can list everything at once before any compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .io import atomic_path

CACHE_ENV_VAR = "DT_WEIGHTS_CACHE"


@dataclass(frozen=True)
class Release:
    """A published weights file and where it comes from."""

    id: str
    filename: str
    what: str
    source: str                  # where a person downloads it (for messages)
    url: str | None = None       # direct download URL
    gdrive_id: str | None = None  # Google Drive file id (fetched with gdown)
    sha256_prefix: str | None = None


RELEASES: dict[str, Release] = {r.id: r for r in (
    Release("inception-2015-12-05", "inception-2015-12-05.pt",
            "clean-fid's TorchScript Inception-v3 (FID/KID)",
            "NVlabs (the file clean-fid and StyleGAN2-ADA use)",
            url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"),
    Release("alexnet", "alexnet-owt-7be5be79.pth", "torchvision's AlexNet ImageNet weights (LPIPS alex backbone)",
            "torchvision (AlexNet_Weights.IMAGENET1K_V1)",
            url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", sha256_prefix="7be5be79"),
    Release("vgg16", "vgg16-397923af.pth", "torchvision's VGG-16 ImageNet weights (LPIPS vgg backbone)",
            "torchvision (VGG16_Weights.IMAGENET1K_V1)",
            url="https://download.pytorch.org/models/vgg16-397923af.pth", sha256_prefix="397923af"),
    Release("squeezenet1_1", "squeezenet1_1-b8a52dc0.pth",
            "torchvision's SqueezeNet 1.1 ImageNet weights (LPIPS squeeze backbone)",
            "torchvision (SqueezeNet1_1_Weights.IMAGENET1K_V1)",
            url="https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth", sha256_prefix="b8a52dc0"),
    Release("arcface-ir-se50", "model_ir_se50.pth",
            "the ArcFace IR-SE50 face-identity network (TreB1eN/InsightFace_Pytorch, as used by pSp, e4e and Asyrp)",
            "pSp's release on Google Drive: https://drive.google.com/file/d/1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn",
            gdrive_id="1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn"),
)}


class WeightsUnavailable(FileNotFoundError):
    """A configured weights file is missing and cannot be downloaded now."""


def is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "DT_OFFLINE"))


def cache_dir() -> Path:
    """``$DT_WEIGHTS_CACHE``, else ``~/.cache/diffusion_transfer/weights``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "diffusion_transfer" / "weights")


def _is_url(spec: str) -> bool:
    return spec.startswith(("https://", "http://"))


def _candidates(release: Release) -> list[Path]:
    """Where an id's file may already be: the project cache, then torch hub's
    checkpoint folder (where torchvision keeps its downloads)."""
    out = [cache_dir() / release.filename]
    try:
        import torch.hub

        out.append(Path(torch.hub.get_dir()) / "checkpoints" / release.filename)
    except Exception:  # torch absent or hub dir unresolvable: the cache alone
        pass
    return out


def _release_for(spec: str) -> Release | None:
    if spec in RELEASES:
        return RELEASES[spec]
    if _is_url(spec):
        name = spec.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "download"
        return Release(spec, name, f"weights from {spec}", spec, url=spec)
    return None


def looks_like_id(spec: str) -> bool:
    """True for a release id or a URL (as opposed to a local path)."""
    return _release_for(str(spec)) is not None


def missing_weights(spec: str | os.PathLike | None, what: str = "weights") -> str | None:
    """Why ``spec`` cannot be had before compute starts, or None: a local file
    that does not exist, an unknown id, or an id/URL that is neither cached nor
    downloadable (offline, or a source needing a tool that is not installed)."""
    if spec is None:
        return None
    spec = str(spec)
    release = _release_for(spec)
    if release is None:
        if Path(spec).expanduser().is_file():
            return None
        known = ", ".join(sorted(RELEASES))
        return f"{spec} does not exist; put {what} there (or give a known id: {known})"
    if any(p.is_file() for p in _candidates(release)):
        return None
    where = f"{release.what}, from {release.source}"
    if is_offline():
        return (f"{spec!r} is not in the weights cache ({cache_dir()}) and downloads are off "
                f"(HF_HUB_OFFLINE/DT_OFFLINE); put {release.filename} there, or set a local path ({where})")
    if release.url is None and release.gdrive_id is not None and not _has_gdown():
        return (f"{spec!r} is not in the weights cache ({cache_dir()}); downloading it from Google Drive "
                f"needs `pip install gdown`, or put {release.filename} there by hand ({where})")
    return None


def _has_gdown() -> bool:
    import importlib.util

    return importlib.util.find_spec("gdown") is not None


def _download(release: Release, dest: Path) -> None:
    """Fetch ``release`` to ``dest`` through a temporary file in the same
    folder, renamed only when complete."""
    with atomic_path(dest, ".part") as part:
        tmp = str(part)
        if release.url is not None:
            import torch.hub

            torch.hub.download_url_to_file(release.url, tmp, hash_prefix=release.sha256_prefix, progress=True)
        else:
            import gdown

            if gdown.download(id=release.gdrive_id, output=tmp, quiet=False) is None:
                raise WeightsUnavailable(f"gdown could not fetch {release.source}")


#: The download function (tests replace it; nothing in the suite touches the network).
downloader: Callable[[Release, Path], None] = _download


def resolve_weights(spec: str | os.PathLike, what: str = "weights") -> Path:
    """The local file for ``spec`` (a path, a release id or a URL), downloading
    an id or URL into the cache when it is not there and the machine is online.
    Raises :class:`WeightsUnavailable` with where the file comes from."""
    spec = str(spec)
    release = _release_for(spec)
    if release is None:
        path = Path(spec).expanduser()
        if path.is_file():
            return path
        raise WeightsUnavailable(missing_weights(spec, what))
    for candidate in _candidates(release):
        if candidate.is_file():
            return candidate
    problem = missing_weights(spec, what)
    if problem:
        raise WeightsUnavailable(problem)
    dest = cache_dir() / release.filename
    try:
        downloader(release, dest)
    except WeightsUnavailable:
        raise
    except Exception as exc:  # network errors come in many types; say what failed and where from
        raise WeightsUnavailable(
            f"downloading {spec!r} ({release.what}) from {release.source} failed: {exc}. "
            f"Put {release.filename} at {dest} or set a local path.") from exc
    if not dest.is_file():
        raise WeightsUnavailable(f"downloading {spec!r} left no file at {dest}")
    return dest

