"""Atomic checkpoints; resuming loads the newest one the model can use
(unreadable or mismatched ones are skipped, saying why)."""

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


def _all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


# --- the newest checkpoint this model can resume from -----------------------------


def load_usable(checkpoint_dir: str | os.PathLike[str], model: torch.nn.Module,
                optimizer: torch.optim.Optimizer | None = None, ema: torch.nn.Module | None = None,
                config: Any = None) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint in ``checkpoint_dir`` that ``model`` (and its
    ``optimizer`` and ``ema``) can resume from, with its path; None if there
    is none. A newer one that cannot be read, or whose tensors do not match
    the model's, is skipped with a warning saying why, naming the training
    settings (``config``, the run's TrainConfig) that differ from the ones it
    was written with, so that the run falls back instead of stopping."""
    expected = model.state_dict()
    for path in reversed(checkpoint_paths(checkpoint_dir)):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or not {"step", "model", "optimizer", "rng"} <= set(payload):
                raise ValueError("missing keys")
        except Exception as exc:  # truncated / corrupt file: fall back to an older one
            log.warning("skipping unreadable checkpoint %s (%s); trying an older one", path, exc)
            continue
        problems = state_mismatches(payload["model"], expected, "model")
        if ema is not None and payload.get("ema") is not None:
            problems += state_mismatches(payload["ema"], ema.state_dict(), "EMA")
        if optimizer is not None:
            problems += _optimizer_mismatches(payload["optimizer"], optimizer)
        if problems:
            changed = changed_settings(payload.get("config"), config)
            log.warning("skipping checkpoint %s: it does not match this model (%s)%s; trying an older one", path,
                        "; ".join(problems), f"; settings changed since it was written: {changed}" if changed else "")
            continue
        return payload, path
    return None


def state_mismatches(saved: Any, expected: dict[str, torch.Tensor], what: str, limit: int = 3) -> list[str]:
    """Why the state dict ``saved`` cannot be loaded into a module whose
    state dict is ``expected``: missing or extra tensors, differing shapes."""
    if not isinstance(saved, dict):
        return [f"its {what} state is a {type(saved).__name__}, not a state dict"]
    out = []
    missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing:
        out.append(f"its {what} lacks {len(missing)} tensor(s) of this one, e.g. {', '.join(missing[:limit])}")
    if extra:
        out.append(f"its {what} has {len(extra)} tensor(s) this one lacks, e.g. {', '.join(extra[:limit])}")
    shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(expected[k].shape)} now"
              for k in sorted(set(saved) & set(expected))
              if getattr(saved[k], "shape", None) is not None and tuple(saved[k].shape) != tuple(expected[k].shape)]
    if shapes:
        out.append(f"{len(shapes)} {what} tensor shape(s) differ: {'; '.join(shapes[:limit])}")
    return out


def _optimizer_mismatches(saved: Any, optimizer: torch.optim.Optimizer) -> list[str]:
    try:
        saved_sizes = [len(g["params"]) for g in saved["param_groups"]]
    except (KeyError, TypeError):
        return ["its optimizer state has no parameter groups"]
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    return [] if saved_sizes == sizes else [
        f"its optimizer trains {sum(saved_sizes)} parameter tensors, this run {sum(sizes)}"]


def changed_settings(saved: Any, config: Any) -> str:
    """``key was A, now B`` for each training setting that differs."""
    now = config.model_dump() if hasattr(config, "model_dump") else config
    if not isinstance(saved, dict) or not isinstance(now, dict):
        return ""
    return ", ".join(f"{k} was {saved[k]!r}, now {now[k]!r}" for k in sorted(set(saved) & set(now))
                     if saved[k] != now[k])
