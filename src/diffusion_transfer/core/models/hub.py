"""A model declared by a Hugging Face Hub id, read from the local cache.

``load_unet`` (core/models/unet.py) resolves a Hub id with
``snapshot_download``; offline (``HF_HUB_OFFLINE=1``) only the local cache
may serve it. Here is what the rest of the project needs to treat a cached
snapshot like a folder, without importing diffusers:

* :func:`cached_snapshot` -- the snapshot folder of an id in the local cache
  (``models--owner--name/snapshots/<hash>``, found through ``refs/main``), or None;
* :func:`is_text_to_image_snapshot` -- a Stable Diffusion pipeline
  (``model_index.json`` names ``StableDiffusionPipeline``, or ``text_encoder/``
  and ``tokenizer/`` beside ``unet/``);
* :func:`hub_is_text_to_image` -- online, for an id not cached yet: whether the
  ``model_index.json`` it names, fetched alone, is a Stable Diffusion pipeline's;
* :func:`snapshot_problems` -- the parts and files a cached snapshot lacks;
* :func:`hub_missing` -- the pre-run message for an id that cannot be used
  offline, naming the YAML key, the id, what is missing and the fix.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

__all__ = ["HUB_PATTERNS", "cached_snapshot", "hub_cache_dir", "hub_missing", "hub_is_text_to_image",
           "hub_offline", "is_hub_id", "is_text_to_image_snapshot", "snapshot_problems"]

#: What a Hub id's snapshot brings: a bare UNet repo's files, or a pipeline's used parts.
HUB_PATTERNS = ["model_index.json", "config.json", "scheduler_config.json", "diffusion_pytorch_model.*",
                "unet/*", "scheduler/*", "vqvae/*", "vae/*", "text_encoder/*", "tokenizer/*"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")

_MODEL_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
#: Per used part of a pipeline: the files that must be there, each a tuple of alternatives.
_PART_FILES = {
    "unet": (("config.json",), _MODEL_WEIGHTS),
    "vae": (("config.json",), _MODEL_WEIGHTS),
    "vqvae": (("config.json",), _MODEL_WEIGHTS),
    "scheduler": (("scheduler_config.json",),),
    "text_encoder": (("config.json",), ("model.safetensors", "pytorch_model.bin")),
    "tokenizer": (("tokenizer.json", "vocab.json"), ("tokenizer.json", "merges.txt")),
}
#: How a part's files are named when some lack, where the slots above say it badly.
_PART_SAYS = {"tokenizer": "tokenizer.json, or vocab.json and merges.txt"}  # a fast tokenizer's file, or CLIP's BPE
_TEXT_PIPELINES = ("StableDiffusionPipeline",)
_EXPECTED = ("model_index.json with unet/ (config.json, diffusion_pytorch_model.safetensors) and "
             "scheduler/scheduler_config.json, and for a Stable Diffusion pipeline vae/ (config.json, "
             "diffusion_pytorch_model.safetensors), text_encoder/ (config.json, model.safetensors) and tokenizer/ "
             "(tokenizer.json, or vocab.json and merges.txt); or, for a bare UNet repo, config.json and diffusion_pytorch_model.safetensors")


def is_hub_id(text: str) -> bool:
    """``owner/name`` that is not an existing path: a Hub id (a catalog name has no ``/``)."""
    return ("/" in text and not text.startswith((".", "~", "/")) and bool(HUB_ID.match(text))
            and not Path(text).exists())


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_cache_dir() -> Path:
    """The Hub cache: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE or HF_HOME/hub as the
    environment says now (huggingface_hub reads them once, at import, so a cache
    chosen later, a test's, would be missed), else huggingface_hub's own."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    if cache is None:
        from huggingface_hub import constants  # deferred: ~0.4 s to import, only a Hub id needs it

        cache = constants.HF_HUB_CACHE
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def cached_snapshot(repo_id: str) -> Path | None:
    """The local cache's snapshot folder of ``repo_id`` (whole or partial), or None; no network."""
    # deferred: huggingface_hub costs ~0.4 s to import, and only a source declared by Hub id needs it
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True,
                                      cache_dir=str(hub_cache_dir())))
    except IncompleteSnapshotError as exc:  # an interrupted download: snapshot_problems says what it lacks
        return Path(exc.snapshot_path) if getattr(exc, "snapshot_path", None) else None
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError), or an id the hub would refuse
        return None


#: (repo id, cache folder) of the repos the Hub said have no model_index.json: bare UNet repos, not asked
#: again in this process (a found index is cached on disk; a Hub that did not answer is asked again).
_BARE_REPOS: set[tuple[str, str]] = set()


def hub_is_text_to_image(repo_id: str) -> bool:
    """Online, for an id the cache lacks: whether its ``model_index.json``,
    fetched alone (a few hundred bytes, kept in the cache), names a Stable
    Diffusion pipeline. False for a bare UNet repo (it has no such file) or when
    the Hub cannot answer (``load_unet`` then says why)."""
    # deferred: huggingface_hub costs ~0.4 s to import, and only a source declared by Hub id needs it
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    key = (repo_id, str(hub_cache_dir()))
    if key in _BARE_REPOS:
        return False
    try:
        index = Path(hf_hub_download(repo_id, "model_index.json", cache_dir=key[1]))
    except EntryNotFoundError:  # the Hub answered: a bare UNet repo
        _BARE_REPOS.add(key)
        return False
    except Exception:  # noqa: BLE001 - no answer from the Hub
        return False
    return _index(index.parent).get("_class_name") in _TEXT_PIPELINES


def _index(folder: Path) -> dict:
    try:
        value = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def is_text_to_image_snapshot(folder: Path) -> bool:
    """A Stable Diffusion pipeline: model_index.json says so (even where a part
    is still missing), or text_encoder/ and tokenizer/ are beside unet/."""
    if _index(folder).get("_class_name") in _TEXT_PIPELINES:
        return True
    return all((folder / part).is_dir() for part in ("unet", "text_encoder", "tokenizer"))


def _needed_parts(folder: Path) -> list[str]:
    index = _index(folder)
    named = [name for name, spec in index.items() if name in _PART_FILES and isinstance(spec, list)
             and spec and spec[-1] is not None]  # a component saved as null is not needed
    if index.get("_class_name") in _TEXT_PIPELINES:
        named = list(dict.fromkeys([*named, "unet", "vae", "text_encoder", "tokenizer", "scheduler"]))
    return named or [name for name in _PART_FILES if (folder / name).is_dir()]


def snapshot_problems(folder: Path) -> list[str]:
    """What a cached snapshot lacks to load: per part, the missing files (a
    broken link to a blob that was never downloaded counts as missing)."""
    parts = _needed_parts(folder)
    if not parts:  # a bare UNet repo
        if (folder / "config.json").is_file() and any((folder / w).is_file() for w in _MODEL_WEIGHTS):
            return []
        return [_EXPECTED]
    problems = []
    for part in parts:
        lacks = [" or ".join(names) for names in _PART_FILES[part]
                 if not any((folder / part / name).is_file() for name in names)]
        if lacks:
            problems.append(f"{part}/ ({_PART_SAYS.get(part) or ', '.join(lacks)})")
    return problems


def hub_missing(repo_id: str, key: str | None = None) -> str | None:
    """Why the Hub id ``repo_id`` cannot be loaded offline, or None when its
    cached snapshot is whole. ``key``: the YAML key that declares it."""
    where = key or "the model parameter"
    snapshot = cached_snapshot(repo_id)
    if snapshot is None:
        store = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
        what = f"it is not in the local Hugging Face cache ({store} does not exist); it needs {_EXPECTED}"
    else:
        problems = snapshot_problems(snapshot)
        if not problems:
            return None
        what = f"its cached snapshot ({snapshot}) lacks {'; '.join(problems)}"
    return (f"{where} is the Hub id {repo_id!r}, which cannot be loaded offline (HF_HUB_OFFLINE): {what}. Download "
            f"it on a machine with internet (`huggingface-cli download {repo_id}`, or `hf download {repo_id}`) and "
            f"copy the cache folder here (HF_HUB_CACHE, now {hub_cache_dir()}), or set {where} to a local folder "
            "of the same layout")
