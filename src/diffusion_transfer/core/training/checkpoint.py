"""Atomic checkpoints, newest-first loading that skips unreadable files."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^step_(\d{7,})\.pt$")

# --- checkpoints --------------------------------------------------------------


def checkpoint_paths(checkpoint_dir: str | os.PathLike[str]) -> list[Path]:
    """``step_NNNNNNN.pt`` files in ``checkpoint_dir``, oldest first."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def _atomic_save(payload: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_latest(checkpoint_dir: Path) -> tuple[dict[str, Any], Path] | None:
    for path in reversed(checkpoint_paths(checkpoint_dir)):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or not {"step", "model", "optimizer", "rng"} <= set(payload):
                raise ValueError("missing keys")
            return payload, path
        except Exception as exc:  # truncated / corrupt file: fall back to an older one
            log.warning("skipping unreadable checkpoint %s (%s)", path, exc)
    return None


def _all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())
