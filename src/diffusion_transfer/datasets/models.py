"""Model artifacts: diffusers UNets, CLIP models and the attribute classifier.

Loading never reaches the network unless the id is a hub id and the hub is
allowed; a missing local file fails fast with a message naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from diffusion_transfer.core.io import payload_bytes, space_checked


class UNetDataset(AbstractDataset[Any, Any]):
    """A diffusers ``UNet2DModel`` in a ``save_pretrained`` folder, or a Hub id
    (read, like a folder, from its snapshot in the local cache: core/models/hub.py).
    ``download_hint`` is added to the error when the folder is missing (where
    the weights come from and what to put there); ``yaml_key`` is the key that
    declares it (``sources.<s>.model``), named by the pre-run check."""

    def __init__(self, path: str, download_hint: str = "", metadata: dict[str, Any] | None = None,
                 class_label: int | str | None = None, yaml_key: str | None = None):
        self._path = path
        self._hint = download_hint
        self._key = yaml_key
        self.metadata = metadata
        #: a class-conditional model's label for its own samples (``sources.<s>.class_label``)
        self.class_label = class_label

    def load(self):
        # deferred: core.models' __init__ imports diffusers (~3 s), which building the catalog does not need
        from diffusion_transfer.core.models.class_labels import label_index, set_class_label
        # deferred: as above
        from diffusion_transfer.core.models.unet import load_unet

        if self._hint and not self._exists():
            raise DatasetError(f"No UNet at {self._path}. {self._hint}")
        model = load_unet(self._path)
        if self.class_label is not None:
            set_class_label(model, label_index(model, self.class_label, f"the class_label of {self._path}"))
        return model

    def save(self, model) -> None:
        # deferred: core.models' __init__ imports diffusers (~3 s), which building the catalog does not need
        from diffusion_transfer.core.models.unet import save_unet

        with space_checked(self._path, payload_bytes(model)):
            save_unet(model, self._path)

    def missing(self) -> str | None:
        """For the pre-run check: why loading would fail, or None."""
        # deferred: core.models' __init__ imports diffusers (~3 s), which building the catalog does not need
        from diffusion_transfer.core.models.hub import hub_missing, hub_offline, is_hub_id

        if self._exists():
            return None
        if not self._hint and is_hub_id(self._path):  # online, load_unet downloads what the cache lacks
            return hub_missing(self._path, self._key) if hub_offline() else None
        return f"no UNet folder at {self._path}." + (f" {self._hint}" if self._hint else "")

    def local_folder(self) -> Path | None:
        """Where the model is read from: its folder, or a Hub id's snapshot in
        the local cache (whole or partial); None when there is neither."""
        # deferred: core.models' __init__ imports diffusers (~3 s), which building the catalog does not need
        from diffusion_transfer.core.models.hub import cached_snapshot, is_hub_id

        folder = Path(self._path).expanduser()
        if folder.is_dir():
            return folder
        return cached_snapshot(self._path) if is_hub_id(self._path) else None

    def _exists(self) -> bool:
        folder = Path(self._path)
        return any((folder / name).exists() for name in ("config.json", "adapter.json", "unet/config.json"))

    def configs(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The UNet's ``config.json`` and the scheduler config, read without
        loading weights (None where there is none, or for a Hub id not in the
        local cache); a bad JSON file raises ``ValueError`` naming it."""
        # deferred: core.models' __init__ imports diffusers (~3 s), which building the catalog does not need
        from diffusion_transfer.core.models.scheduler_config import read_scheduler_config

        folder = self.local_folder()
        if folder is None:
            return None, None
        unet = self._unet_folder(folder)
        config = None
        if (unet / "config.json").is_file():
            try:
                config = json.loads((unet / "config.json").read_text())
            except ValueError as exc:
                raise ValueError(f"{unet / 'config.json'} is not valid JSON: {exc}") from None
        found = self.scheduler_file()
        return config, (read_scheduler_config(found) if found else None)

    def scheduler_file(self) -> Path | None:
        """The folder's ``scheduler_config.json`` (the one :meth:`configs` reads), or None."""
        # deferred: core.models' __init__ imports diffusers (~3 s), which building the catalog does not need
        from diffusion_transfer.core.models.scheduler_config import find_scheduler_config

        folder = self.local_folder()
        if folder is None:
            return None
        return find_scheduler_config(folder) or find_scheduler_config(self._unet_folder(folder))

    @staticmethod
    def _unet_folder(folder: Path) -> Path:
        adapted_or_pipeline = (folder / "adapter.json").exists() or not (folder / "config.json").exists()
        return folder / "unet" if adapted_or_pipeline else folder

    def autoencoder_config(self) -> dict[str, Any] | None:
        """A latent model's autoencoder ``config.json`` (``vqvae/`` or ``vae/``
        beside ``unet/``), read without loading weights; None for a pixel model."""
        folder = self.local_folder()
        for part in ("vqvae", "vae") if folder is not None else ():
            path = folder / part / "config.json"
            if path.is_file():
                try:
                    return json.loads(path.read_text())
                except ValueError as exc:
                    raise ValueError(f"{path} is not valid JSON: {exc}") from None
        return None

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "class_label": self.class_label}


class ClipDataset(AbstractDataset[Any, Any]):
    """A CLIP model behind one interface (``encode_images``, ``encode_text``,
    ``weights_label``).

    ``kind: world`` is the FaceWorld CLIP saved by the ``world`` pipeline;
    ``kind: open_clip`` is any open_clip architecture (``model``, e.g.
    ``ViT-B-32``) with weights from ``pretrained``, a local file path (or, when
    online, an open_clip tag such as ``openai``)."""

    def __init__(self, path: str | None = None, kind: str = "world", model: str | None = None,
                 pretrained: str | None = None, metadata: dict[str, Any] | None = None):
        if kind not in ("world", "open_clip"):
            raise DatasetError(f"ClipDataset kind must be 'world' or 'open_clip', got {kind!r}")
        self._path, self._kind, self._model, self._pretrained = path, kind, model, pretrained
        self.metadata = metadata

    def load(self):
        if self._kind == "world":
            # deferred: open_clip (~1 s after torch), which building the catalog does not need
            from diffusion_transfer.core.world.clip_io import load_world_clip

            return load_world_clip(self._path)
        # deferred: core.models' __init__ imports diffusers (~3 s), which building the catalog does not need
        from diffusion_transfer.core.models.clip import load_open_clip

        return load_open_clip(self._model, self._pretrained)

    def missing(self) -> str | None:
        """For the pre-run check: why loading would fail, or None."""
        if self._kind == "world":
            return None if Path(self._path).is_dir() else (
                f"no FaceWorld CLIP at {self._path}: rebuild it with `kedro run --pipeline=world`")
        # deferred: core.models' __init__ imports diffusers (~3 s), which building the catalog does not need
        from diffusion_transfer.core.models.clip import missing_open_clip_weights

        return missing_open_clip_weights(self._model, self._pretrained)

    def save(self, clip) -> None:
        if self._kind != "world":
            raise DatasetError("Only the FaceWorld CLIP (kind: world) is saved by this project")
        # deferred: open_clip (~1 s after torch), which building the catalog does not need
        from diffusion_transfer.core.world.clip_io import save_world_clip

        model = clip.model if hasattr(clip, "model") else clip
        with space_checked(self._path, payload_bytes(model)):
            save_world_clip(model, self._path)

    def _exists(self) -> bool:
        return self._kind != "world" or Path(self._path).is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"kind": self._kind, "path": self._path, "model": self._model, "pretrained": self._pretrained}


class _ModelFolderDataset(AbstractDataset[Any, Any]):
    """A model saved in a folder by a core ``save_*`` function and read back by
    its ``load_*`` (imported lazily: loading the catalog stays cheap).
    Subclasses name the module, the two functions and the file that marks a
    complete folder."""

    _module = ""
    _load_fn = ""
    _save_fn = ""
    _marker = ""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = path
        self.metadata = metadata

    def _fn(self, name: str):
        import importlib

        return getattr(importlib.import_module(self._module), name)

    def load(self):
        return self._fn(self._load_fn)(self._path)

    def save(self, model) -> None:
        with space_checked(self._path, payload_bytes(model)):
            self._fn(self._save_fn)(model, self._path)

    def _exists(self) -> bool:
        folder = Path(self._path)
        return (folder / self._marker).exists() if self._marker else folder.is_dir()

    def missing(self) -> str | None:
        """For the pre-run check: why loading would fail, or None."""
        return None if self._exists() else f"no saved model at {self._path}"

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path}


class AttributeClassifierDataset(_ModelFolderDataset):
    """The FaceWorld attribute classifier (evaluation only)."""

    _module = "diffusion_transfer.core.world.classifier_io"
    _load_fn, _save_fn = "load_attribute_classifier", "save_attribute_classifier"


class DomainClassifierDataset(_ModelFolderDataset):
    """The noisy domain classifier p(domain | x_t, t) (TAN, EGSDE) in a folder."""

    _module = "diffusion_transfer.core.models.domain_classifier"
    _load_fn, _save_fn = "load_domain_classifier", "save_domain_classifier"
    _marker = "classifier.json"
