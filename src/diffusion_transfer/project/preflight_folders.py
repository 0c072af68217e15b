"""The pre-run check of folders, after ``preflight.check_inputs``: every image
folder the run reads holds at least one image it can use, directly in it, at
the size the run needs; every place it writes to can be written. Each
problem names the folder and the parameter or catalog entry that sets it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from diffusion_transfer.core.data.images import list_image_files
from diffusion_transfer.datasets.folders import ImageFolderDataset
from diffusion_transfer.project.declared import declarations
from diffusion_transfer.project.preflight import MissingInputsError
from diffusion_transfer.core.models.latent import autoencoder_downscale

#: Folders set by parameters, checked when a node of the run reads the block.
_PARAMETER_FOLDERS = {
    "params:paths.checkpoints": ("paths", "checkpoints"),
    "params:paths.features": ("paths", "features"),
    "params:evaluation": ("evaluation", "cache_dir"),
    "params:methods.anl": ("methods", "anl", "condition", "embeddings_cache"),
    "params:world": ("world", "source", "checkpoint_dir"),
}


def check_image_folders(pipeline, catalog, params: dict[str, Any]) -> None:
    """Each real image folder of the run has a usable image in it (read by its
    header only), of the smallest side the run accepts, and a few-shot
    folder holds more files than its shots."""
    problems = []
    for entry, (parameter, min_side, why, shots) in sorted(_image_folders(pipeline, catalog, params).items()):
        folder = catalog.get(entry).path
        problem = folder_problem(folder, min_side)
        if problem:
            problems.append(f"{parameter} ({folder}): {problem}" + (f" ({why})" if "too small" in problem else ""))
        elif shots is not None and (n := sum(1 for p in _image_entries(folder) if p.is_file())) < shots + 2:
            problems.append(f"datasets.{parameter.split('.')[1]}.curation.n_shot is {shots} but {folder} holds "
                            f"{n} file(s): the shots and at least 2 held-out images for FID/KID need {shots + 2}; "
                            "lower n_shot or add images")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise MissingInputsError(f"{len(problems)} image folder(s) of this run cannot be used; nothing was "
                                 f"computed:\n{lines}")


def _image_folders(pipeline, catalog, params: dict[str, Any]) -> dict[str, tuple[str, int, str, int | None]]:
    """Catalog entry -> (the parameter naming it, the smallest image side, why,
    the shots of a few-shot target) of the run's real image folders."""
    decl = declarations(params)
    inputs = pipeline.inputs()
    folders: dict[str, tuple[str, int, str, int | None]] = {}
    for target in decl.datasets.values():
        size = _sample_size(catalog.get(target.source.entries["source_model"]))
        if size is None:
            continue
        source = target.source
        min_side = target.params.curation.min_size or target.params.curation.resolution or size
        folders[target.raw_entry] = (f"datasets.{target.name}.images", min_side,
                                     f"datasets.{target.name}.curation.min_size, or the source model's sample_size "
                                     f"{size}, sets it", target.params.curation.n_shot if target.few_shot else None)
        folders.setdefault(source.entries["source_images"],
                           (f"sources.{source.name}.images", size, f"the source model's sample_size {size}", None))
    return {e: v for e, v in folders.items() if e in inputs and isinstance(catalog.get(e), ImageFolderDataset)
            and not catalog.get(e).rendered and catalog.get(e).path.is_dir()}


def _sample_size(model_dataset: Any) -> int | None:
    try:
        unet, _ = model_dataset.configs() if hasattr(model_dataset, "configs") else (None, None)
    except ValueError:
        return None  # check_models says why
    size = (unet or {}).get("sample_size")
    size = size[0] if isinstance(size, list) and size else size
    if not (isinstance(size, int) and size > 0):
        return None
    try:  # a latent model makes images larger than its sample_size by the autoencoder's downscaling
        autoencoder = model_dataset.autoencoder_config() if hasattr(model_dataset, "autoencoder_config") else None
    except ValueError:
        return None  # check_models says why
    return size * autoencoder_downscale(autoencoder) if autoencoder else size


def folder_problem(folder: Path, min_side: int) -> str | None:
    """Why no image of ``folder`` can be used, or None once one can. Reads
    headers only and stops at the first usable image."""
    from PIL import Image

    entries = _image_entries(folder)
    files = [p for p in entries if p.is_file()]
    if not files:
        nested = [p for p in entries if p.is_dir() and any(c.is_file() for c in p.iterdir())]
        if nested:
            return (f"no image directly in the folder; there are files one level down in {nested[0]}"
                    f"{f' and {len(nested) - 1} other sub-folder(s)' if len(nested) > 1 else ''}. Sub-folders are "
                    f"not read: point the parameter at {nested[0]} or move the images up")
        return "the folder is empty (hidden files and sidecars aside): put the images directly in it"
    reasons: dict[str, int] = {}
    for path in files:
        try:
            with Image.open(path) as img:
                width, height = img.size
        except Exception:  # noqa: BLE001 - any unreadable file is just not usable
            reasons["not an image PIL can read"] = reasons.get("not an image PIL can read", 0) + 1
            continue
        if min(width, height) >= min_side:
            return None
        key = f"too small (under {min_side}x{min_side} pixels)"
        reasons[key] = reasons.get(key, 0) + 1
    said = ", ".join(f"{n} {why}" for why, n in reasons.items())
    return (f"none of its {len(files)} files can be used: {said}. Put images of at least {min_side}x{min_side} "
            "pixels in it")


def _image_entries(folder: Path) -> list[Path]:
    return list_image_files(folder)


def check_outputs_writable(pipeline, catalog, params: dict[str, Any]) -> None:
    """Every file and folder the run writes (catalog outputs and folders set
    by parameters) can be written: checked by creating and removing a probe
    file where each will go, so that a read-only folder fails now, not after training."""
    places: dict[str, Path] = {}
    for name in sorted(pipeline.all_outputs()):
        path = _local_path(catalog.get(name))
        if path is not None:
            places[f"'{name}'"] = path
    inputs = {i for n in pipeline.nodes for i in n.inputs}
    for used, keys in _PARAMETER_FOLDERS.items():
        value = _lookup(params, keys)
        if used in inputs and isinstance(value, str):
            places[f"parameter '{'.'.join(keys)}'"] = Path(value)
    blocked: dict[str, list[str]] = {}  # one line per cause: a read-only folder blocks many outputs
    for what, path in places.items():
        why = unwritable(_relative(path))
        if why:
            blocked.setdefault(why, []).append(what)
    if blocked:
        lines = "\n".join(f"  - {why}; needed by {', '.join(whats)}" for why, whats in blocked.items())
        raise MissingInputsError(
            f"{sum(map(len, blocked.values()))} output location(s) of this run cannot be written; nothing was "
            "computed. Make them writable, or move the environment's outputs with data_root in "
            "conf/<env>/globals.yml:\n" + lines)


def _relative(path: Path) -> Path:
    """``path`` relative to the project (the working directory) when under it, as the parameters write it."""
    try:
        return path.relative_to(Path.cwd()) if path.is_absolute() else path
    except ValueError:
        return path


def _lookup(params: dict[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = params
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _local_path(dataset: Any) -> Path | None:
    if dataset is None or getattr(dataset, "_protocol", "file") not in ("file", None):
        return None
    path = getattr(dataset, "_filepath", None) or getattr(dataset, "_path", None)
    return None if path is None or "://" in str(path) else Path(str(path))  # None: in memory or remote


def unwritable(path: Path) -> str | None:
    """Why ``path`` (a file or folder to be written, maybe not there yet)
    cannot be written, or None."""
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            return f"{existing} is a broken symbolic link"
        existing = existing.parent
    if existing != path and not existing.is_dir():
        return f"{existing} is a file where a folder must be"
    probes = [existing if existing.is_dir() else existing.parent]
    if existing == path and existing.is_dir():
        probes.append(existing.parent)  # folders are replaced atomically, from their parent
    for folder in probes:
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            return f"cannot write in {folder} ({err.strerror})"
    if existing == path and path.is_file():
        try:
            with open(path, "ab"):
                pass
        except OSError as err:
            return f"cannot overwrite {path} ({err.strerror})"
    return None
