"""Image ingestion at the file boundary: validate, convert, crop, resize.

Every file in a folder is either turned into a ``uint8 (R, R, 3)`` RGB array
or listed as skipped with a reason; a bad file never raises. Only an empty
input, or an input where nothing survives, raises an :class:`ImageFolderError`
(a ``ValueError``) whose message names the folder, counts the skipped files
and names the most common reasons.

Decoding is strict: a truncated file is an error here (this module never sets
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``; if another module turned it on
globally, truncated files would decode with grey padding instead).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..io import atomic_write_file

logger = logging.getLogger(__name__)

#: Sidecar files written next to images (FaceWorld records, world metadata);
#: never listed as images nor as skipped files.
SIDECAR_NAMES: frozenset[str] = frozenset({"attributes.jsonl", "world.json", "metadata.jsonl"})

_RESAMPLE = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0  # box-reduce first, then Lanczos: fast and alias-free
_WHITE = (255, 255, 255)


@dataclass
class IngestResult:
    """What :func:`ingest_images` kept and what it skipped.

    ``images``: ``uint8 (N, R, R, 3)``; ``names``: the kept file names, in
    input order (``names[i]`` is ``images[i]``); ``skipped``: ``(name,
    reason)`` for every unusable file; ``notes``: ``(name, note)`` for kept
    files that needed a colour conversion (grayscale, alpha, CMYK, ...).
    """

    images: np.ndarray
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def __iter__(self):
        # Allows ``images, names, skipped = ingest_images(...)``.
        return iter((self.images, self.names, self.skipped))


class ImageFolderError(ValueError):
    """A folder yields no usable image (empty, images only in sub-folders,
    every file unusable); the message names the folder and what to do."""


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Every entry directly in ``folder``, sorted by name.

    Hidden files (leading ``.``) and sidecars (``attributes.jsonl``,
    ``world.json``) are left out; everything else, non-image files, broken
    symbolic links and sub-folders included, is returned so that
    :func:`ingest_images` lists it as skipped with its reason. Sub-folders
    are not descended into.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder does not exist: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"expected an image folder, got a file: {folder}")
    files = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in SIDECAR_NAMES]
    return sorted(files, key=lambda p: p.name)


def not_a_file_reason(path: Path) -> str:
    """Why ``path`` (an entry of an image folder that is not a regular file) is skipped."""
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link: its target {os.readlink(path)} does not exist"
    if path.is_dir():
        inside = sum(1 for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        return (f"a sub-folder ({inside} file(s) inside): sub-folders are not read; move its images up into "
                f"{path.parent} or point the parameter at {path}")
    return "missing file" if not path.exists() else "not a regular file"


def _image_extensions() -> frozenset[str]:
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale 16-bit / 32-bit integer or float grayscale to 8-bit ``L``.

    ``Image.convert("RGB")`` clips these modes at 255 instead of scaling,
    which turns a 16-bit image white.
    """
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        arr = arr / 257.0
    elif img.mode == "I":
        arr = arr / 257.0 if arr.max(initial=0.0) > 255 else arr
    elif img.mode == "F":
        finite = arr[np.isfinite(arr)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            arr = arr * 255.0
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """Convert any PIL mode to ``RGB``; transparency is composited on white.

    Returns the RGB image and a note describing the conversion (``None`` when
    the image was already plain RGB).
    """
    mode = img.mode
    has_transparency = "transparency" in img.info or mode in {"RGBA", "LA", "PA", "RGBa", "La"}
    if mode == "RGB" and not has_transparency:
        return img, None
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_l(img).convert("RGB"), f"converted {mode} to RGB"
    if has_transparency:
        with warnings.catch_warnings():
            # "Palette images with Transparency expressed in bytes should be
            # converted to RGBA images": that is exactly what happens here.
            warnings.simplefilter("ignore", UserWarning)
            rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        if alpha.min() == 255:
            return rgba.convert("RGB"), f"converted {mode} to RGB (alpha fully opaque)"
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        composite = Image.alpha_composite(background, rgba).convert("RGB")
        return composite, f"converted {mode} to RGB (transparency composited on white)"
    return img.convert("RGB"), f"converted {mode} to RGB"


def _centre_crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    width, height = img.size
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    if (width, height) != (side, side):
        img = img.crop((left, top, left + side, top + side))
    if side != resolution:
        reducing_gap = _REDUCING_GAP if side > resolution else None
        img = img.resize((resolution, resolution), _RESAMPLE, reducing_gap=reducing_gap)
    return img


def _load_one(
    path: Path, resolution: int, min_size: int, image_exts: frozenset[str]
) -> tuple[np.ndarray | None, str | None, str | None]:
    """Return ``(array, None, note)`` for a usable file, ``(None, reason, None)`` otherwise."""
    try:
        with Image.open(path) as img:
            try:
                img.load()
                img = ImageOps.exif_transpose(img)
            except Exception as exc:  # noqa: BLE001 - any decoder failure is a skip
                return None, f"truncated or corrupt image: {_short(exc)}", None
            width, height = img.size
            if min(width, height) < min_size:
                return None, f"too small: {width}x{height} < {min_size}", None
            try:
                rgb, note = _to_rgb(img)
            except Exception as exc:  # noqa: BLE001
                return None, f"unsupported colour mode {img.mode}: {_short(exc)}", None
            out = _centre_crop_resize(rgb, resolution)
            array = np.asarray(out, dtype=np.uint8)
    except UnidentifiedImageError:
        if path.stat().st_size == 0:
            return None, "empty file", None
        if path.suffix.lower() in image_exts:
            return None, "truncated or corrupt image: cannot identify image format", None
        return None, "not an image file", None
    except Image.DecompressionBombError as exc:
        return None, f"too large to decode safely: {_short(exc)}", None
    except OSError as exc:
        return None, f"unreadable file: {_short(exc)}", None
    except Exception as exc:  # noqa: BLE001 - never crash on one bad file
        return None, f"truncated or corrupt image: {_short(exc)}", None
    if array.shape != (resolution, resolution, 3):  # pragma: no cover - defensive
        return None, f"unexpected decoded shape {array.shape}", None
    return array, None, note


def _short(exc: BaseException, limit: int = 200) -> str:
    msg = str(exc).strip() or type(exc).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def _top_reasons(skipped: Sequence[tuple[str, str]], k: int = 3) -> str:
    counts = Counter(_reason_kind(reason) for _, reason in skipped)
    return "; ".join(f"{kind} ({n})" for kind, n in counts.most_common(k))


def ingest_images(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    resolution: int = 32,
    min_size: int | None = None,
) -> IngestResult:
    """Decode, validate, convert to RGB, centre-crop and resize image files.

    ``paths`` is a list of files, or a folder (then :func:`list_image_files`
    lists it). ``min_size`` (default: ``resolution``) is the smallest allowed
    short side in pixels. Bad files are listed in ``result.skipped`` with a
    reason; a :class:`ValueError` is raised only when there are no files or
    none survives.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    resolution = int(resolution)
    if min_size is None:
        min_size = resolution
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise ValueError(f"min_size must be a positive integer, got {min_size!r}")
    min_size = int(min_size)

    source = None
    if isinstance(paths, (str, os.PathLike)):
        source = Path(paths)
        files = [source] if source.is_file() else list_image_files(source)  # raises if missing
    else:
        files = [Path(p) for p in paths]
    parents = {p.parent for p in files}
    folder = source if source is not None else (parents.pop() if len(parents) == 1 else None)
    if not files and folder is None:
        raise ImageFolderError("no files to ingest: the list of files is empty")
    where = f" in {folder}" if folder is not None else ""
    if not files:
        raise ImageFolderError(f"no files to ingest{where}: the folder is empty (hidden files and sidecars are "
                               "ignored); put the images directly in it")

    if getattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False):
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on (set elsewhere): truncated files "
            "will decode with padding instead of being skipped"
        )
    image_exts = _image_extensions()
    arrays: list[np.ndarray] = []
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    notes: list[tuple[str, str]] = []
    for path in files:
        if not path.is_file():
            skipped.append((path.name, not_a_file_reason(path)))
            logger.warning("skipping %s: %s", path, skipped[-1][1])
            continue
        array, reason, note = _load_one(path, resolution, min_size, image_exts)
        if array is None:
            skipped.append((path.name, reason or "unknown error"))
            logger.warning("skipping %s: %s", path, reason)
            continue
        arrays.append(array)
        names.append(path.name)
        if note:
            notes.append((path.name, note))

    if not arrays:
        listed = "; ".join(f"{name}: {reason}" for name, reason in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        raise ImageFolderError(
            f"no usable images{where}: all {len(files)} files were skipped (top reasons: {_top_reasons(skipped)}): "
            f"{listed}{more}. Put decodable images (PNG, JPEG, ...) of at least {min_size}x{min_size} pixels "
            "directly in the folder"
        )
    if skipped:
        logger.info(
            "ingested %d images, skipped %d (%s)", len(arrays), len(skipped), _top_reasons(skipped)
        )
    return IngestResult(np.stack(arrays), names, skipped, notes)


def to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """``uint8 (N, H, W, 3)`` -> ``float32 (N, 3, H, W)`` in ``[-1, 1]``.

    A single ``(H, W, 3)`` image gives ``(3, H, W)``.
    """
    arr = np.asarray(images_uint8)
    if arr.dtype != np.uint8:
        raise ValueError(f"to_tensor expects uint8 images, got dtype {arr.dtype}")
    if arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"to_tensor expects (N, H, W, 3) or (H, W, 3), got shape {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32)
    x = x.movedim(-1, -3)
    return x / 127.5 - 1.0


def to_uint8(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(N, 3, H, W)`` in ``[-1, 1]`` -> ``uint8 (N, H, W, 3)`` (values clamped).

    A single ``(3, H, W)`` image gives ``(H, W, 3)``.
    """
    x = torch.as_tensor(tensor).detach()
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"to_uint8 expects (N, 3, H, W) or (3, H, W), got shape {tuple(x.shape)}")
    x = x.to("cpu", torch.float32)
    x = torch.nan_to_num(x, nan=0.0)
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).contiguous().numpy()


def save_png_atomic(array: np.ndarray | Image.Image, path: str | os.PathLike) -> Path:
    """Write ``uint8 (H, W)``, ``(H, W, 3)``, ``(H, W, 4)`` or a PIL image as PNG.

    The file is written next to its destination and renamed into place, so
    a reader never sees a partial file. Parent folders are created.
    """
    path = Path(path)
    if isinstance(array, Image.Image):
        img = array
    else:
        arr = np.asarray(array)
        if arr.dtype != np.uint8:
            raise ValueError(f"save_png_atomic expects uint8 pixels, got dtype {arr.dtype}")
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4))):
            raise ValueError(f"save_png_atomic expects (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        img = Image.fromarray(np.ascontiguousarray(arr))
    atomic_write_file(path, lambda fh: img.save(fh, format="PNG"))
    return path
