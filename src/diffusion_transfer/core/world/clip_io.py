"""Saving and loading the world CLIP.

Files (:func:`save_world_clip`): ``weights.safetensors`` (fp16 by default)
and ``world_clip.json`` (model name, format version, open_clip model config,
training config, metrics).  The token embedding is stored compactly: only
the rows of BPE tokens that occurred in training (under a hundred of 49,408);
every other row is zero, in the saved file and in the trained model alike,
so a word the world never used encodes as "nothing".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import load_file, save_file

from diffusion_transfer.core.io import atomic_write_folder, require_weights_folder
from diffusion_transfer.core.world.clip import MODEL_NAME, WorldClip, create_world_clip_model, world_clip_model_config
from diffusion_transfer.core.world.common import file_digest

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "world_clip.json"

_TOKEN_IDS_KEY = "token_embedding.ids"
_TOKEN_ROWS_KEY = "token_embedding.rows"
_TOKEN_WEIGHT_KEY = "token_embedding.weight"


def save_world_clip(model: torch.nn.Module | WorldClip, folder: str | Path, *,
                    dtype: str = "float16", metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``weights.safetensors`` (``dtype``: float16 or float32) and ``world_clip.json``
    to ``folder`` atomically (temp dir, then rename).  Returns the folder.  ``metrics``
    defaults to the model's ``world_clip_metrics`` (set by the ``world`` pipeline)."""
    if isinstance(model, WorldClip):
        model = model.model
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    tdtype = torch.float16 if dtype == "float16" else torch.float32
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    emb = state.pop(_TOKEN_WEIGHT_KEY)
    ids = torch.nonzero(emb.abs().sum(dim=1) > 0).flatten()
    tensors = {k: (v.to(tdtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    tensors[_TOKEN_IDS_KEY] = ids.to(torch.int64).contiguous()
    tensors[_TOKEN_ROWS_KEY] = emb[ids].to(tdtype).contiguous()
    model_cfg = getattr(model, "world_clip_model_cfg", None) or world_clip_model_config()
    meta = {
        "name": MODEL_NAME,
        "format_version": FORMAT_VERSION,
        "dtype": dtype,
        "vocab_size": int(emb.shape[0]),
        "model_cfg": model_cfg,
        "train": getattr(model, "world_clip_train_info", None),
        "metrics": dict(metrics or getattr(model, "world_clip_metrics", None) or {}),
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"name": MODEL_NAME,
                                                               "format_version": str(FORMAT_VERSION)})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    return atomic_write_folder(folder, write)


def load_world_clip(folder: str | Path, device: str | torch.device = "cpu") -> WorldClip:
    """Load a folder written by :func:`save_world_clip` (offline; no download)."""
    folder = Path(folder)
    weights, meta_path = require_weights_folder(
        folder, WEIGHTS_FILE, META_FILE, "world CLIP weights",
        "Restore data/06_models/world/clip from git or rebuild it with the `world` pipeline "
        "(train_world_clip + save_world_clip).")
    meta = json.loads(meta_path.read_text())
    if meta.get("name") != MODEL_NAME or int(meta.get("format_version", -1)) != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} holds {meta.get('name')!r} format {meta.get('format_version')!r}; "
            f"expected {MODEL_NAME!r} format {FORMAT_VERSION}"
        )
    model = create_world_clip_model(meta["model_cfg"])
    model.world_clip_model_cfg = meta["model_cfg"]
    model.world_clip_train_info = meta.get("train")
    tensors = load_file(str(weights))
    ids = tensors.pop(_TOKEN_IDS_KEY)
    rows = tensors.pop(_TOKEN_ROWS_KEY)
    emb = torch.zeros(int(meta["vocab_size"]), rows.shape[1], dtype=torch.float32)
    emb[ids] = rows.float()
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    state[_TOKEN_WEIGHT_KEY] = emb
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights} does not match the faceworld-clip config in {meta_path}: {exc}") from exc
    model.to(device).eval()
    cfg = model.visual.preprocess_cfg
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False,
                                           mean=cfg.get("mean"), std=cfg.get("std"))
    label = f"{MODEL_NAME} (FaceWorld weights {folder.name}/{WEIGHTS_FILE} sha256:{file_digest(weights)})"
    return WorldClip(model=model, tokenizer=open_clip.get_tokenizer(MODEL_NAME), preprocess=preprocess,
                     name=MODEL_NAME, weights_label=label, meta=meta)


__all__ = ["FORMAT_VERSION", "META_FILE", "WEIGHTS_FILE", "load_world_clip", "save_world_clip"]
