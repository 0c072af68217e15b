"""A diffusers autoencoder (``VQModel`` or ``AutoencoderKL``) in a
``save_pretrained`` folder: the latent world's first stage
(``core/world/autoencoder.py``), which the world pipeline trains and then
hands to the latent source model's node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from diffusion_transfer.core.io import atomic_write_folder, payload_bytes

_CLASSES = ("VQModel", "AutoencoderKL")


class AutoencoderDataset(AbstractDataset[Any, Any]):
    """Loads and saves (atomically) a ``VQModel`` / ``AutoencoderKL`` folder."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self):
        config = self._path / "config.json"
        if not config.is_file():
            raise DatasetError(f"No autoencoder at {self._path} (no config.json): build it with "
                               "`kedro run --pipeline=world --nodes=train_world_autoencoder`.")
        name = json.loads(config.read_text()).get("_class_name")
        if name not in _CLASSES:
            raise DatasetError(f"{config} describes a {name}, not one of {_CLASSES}")
        import diffusers  # deferred: diffusers takes seconds to import, which building the catalog does not need

        return getattr(diffusers, name).from_pretrained(str(self._path), local_files_only=True).eval()

    def save(self, model) -> None:
        atomic_write_folder(self._path, lambda tmp: model.save_pretrained(str(tmp), safe_serialization=True),
                            needed=payload_bytes(model))

    def _exists(self) -> bool:
        return (self._path / "config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
