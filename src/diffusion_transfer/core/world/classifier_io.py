"""Saving and loading the attribute classifier.

Files (:func:`save_attribute_classifier`): ``classifier.safetensors`` (fp32)
and ``classifier.json`` (architecture, attribute value order, training
 config and metrics).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from diffusion_transfer.core.io import atomic_write_folder, require_weights_folder
from diffusion_transfer.core.world.classifier import AttributeClassifier
from diffusion_transfer.core.world.common import file_digest

FORMAT_VERSION = 1
WEIGHTS_FILE = "classifier.safetensors"
META_FILE = "classifier.json"


def save_attribute_classifier(model: AttributeClassifier, folder: str | Path, *,
                              metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``classifier.safetensors`` (fp32) + ``classifier.json`` atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "name": "faceworld-attribute-classifier",
        "format_version": FORMAT_VERSION,
        "arch": model.arch_config(),
        "train": getattr(model, "train_info", None),
        "metrics": dict(metrics or {}),
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return atomic_write_folder(folder, write)


def load_attribute_classifier(folder: str | Path, device: str | torch.device = "cpu") -> AttributeClassifier:
    """Load a folder written by :func:`save_attribute_classifier` (model in eval mode)."""
    folder = Path(folder)
    weights, meta_path = require_weights_folder(
        folder, WEIGHTS_FILE, META_FILE, "attribute classifier",
        "Restore data/06_models/world/classifier from git or rebuild it with the `world` "
        "pipeline (train_attribute_classifier + save_attribute_classifier).")
    meta = json.loads(meta_path.read_text())
    if int(meta.get("format_version", -1)) != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    arch = meta["arch"]
    model = AttributeClassifier(arch["attributes"], arch["widths"], arch["image_size"])
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights} does not match the architecture in {meta_path}: {exc}") from exc
    model.train_info = meta.get("train")
    model.meta = meta
    model.weights_label = f"faceworld attribute classifier ({folder.name}/{WEIGHTS_FILE} sha256:{file_digest(weights)})"
    return model.to(device).eval()


__all__ = ["FORMAT_VERSION", "META_FILE", "WEIGHTS_FILE", "load_attribute_classifier", "save_attribute_classifier"]
