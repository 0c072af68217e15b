"""A dict of tensors plus JSON metadata in one safetensors file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from kedro.io import AbstractDataset
from safetensors.torch import load_file, save_file

from diffusion_transfer.core.io import atomic_path, payload_bytes

_META_KEY = "json"


class TensorDictDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """Saves ``{"name": Tensor, ..., "meta": {...}}``: tensors go into the
    safetensors payload, the JSON-serialisable ``meta`` dict into its header."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        if not self._filepath.exists():
            raise FileNotFoundError(f"No tensor file at {self._filepath}")
        tensors: dict[str, Any] = dict(load_file(str(self._filepath)))
        from safetensors import safe_open

        with safe_open(str(self._filepath), framework="pt") as f:
            header = f.metadata() or {}
        tensors["meta"] = json.loads(header.get(_META_KEY, "{}"))
        return tensors

    def save(self, data: dict[str, Any]) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in data.items() if isinstance(v, torch.Tensor)}
        others = {k for k, v in data.items() if not isinstance(v, torch.Tensor) and k != "meta"}
        if others:
            raise TypeError(f"TensorDictDataset can only save tensors and 'meta'; got {sorted(others)}")
        meta = json.dumps(data.get("meta", {}), default=str)
        with atomic_path(self._filepath, ".safetensors", needed=payload_bytes(tensors)) as tmp:
            save_file(tensors, str(tmp), metadata={_META_KEY: meta})

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
