"""Atomic checkpoints; resuming loads the newest one the model can use
(unreadable or mismatched ones are skipped, saying why). A checkpoint belongs
to its run: given a run identity (method, source model, settings), one that
records another identity, or none, is skipped too."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from diffusion_transfer.core.io import payload_bytes, space_checked

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
        # a full disk names the folder, the bytes needed and free (core/io.py), not torch's enforce message
        with open(tmp, "wb") as fh, space_checked(path.parent, payload_bytes(payload)):
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
                config: Any = None, run_identity: dict[str, Any] | None = None
                ) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint in ``checkpoint_dir`` that ``model`` (and its
    ``optimizer`` and ``ema``) can resume from, with its path; None if there
    is none. A newer one that cannot be read, or whose tensors do not match
    the model's, is skipped with a warning saying why, naming the training
    settings (``config``, the run's TrainConfig) that differ from the ones it
    was written with, so that the run falls back instead of stopping. With
    ``run_identity`` (see :func:`identity_record`), one whose recorded
    identity differs, or that records none, is skipped the same way: a
    checkpoint of another method or source model is never resumed."""
    expected = model.state_dict()
    for path in reversed(checkpoint_paths(checkpoint_dir)):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or not {"step", "model", "optimizer", "rng"} <= set(payload):
                raise ValueError("missing keys")
        except Exception as exc:  # truncated / corrupt file: fall back to an older one
            log.warning("skipping unreadable checkpoint %s (%s); trying an older one", path, exc)
            continue
        if run_identity is not None and (foreign := identity_differences(payload.get("run_identity"), run_identity)):
            log.warning("skipping checkpoint %s: it belongs to another run (%s); trying an older one", path,
                        "; ".join(foreign))
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


# --- which run a checkpoint belongs to ------------------------------------------------


def identity_record(run_identity: dict[str, Any] | None) -> dict[str, Any] | None:
    """``run_identity`` as a checkpoint stores and compares it: JSON values
    only (tuples become lists), so that a saved record equals the live one.
    Conventional keys: ``method`` (its name), ``source`` (a fingerprint of the
    source model's weights) and ``settings`` (what else changes the weights)."""
    if run_identity is None:
        return None
    if not isinstance(run_identity, dict):
        raise TypeError(f"run_identity must be a dict of JSON values, got {type(run_identity).__name__}")
    try:
        return json.loads(json.dumps(run_identity, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"run_identity must hold JSON values only: {exc}") from None


def identity_differences(saved: Any, expected: dict[str, Any], limit: int = 4) -> list[str]:
    """Why a checkpoint that recorded ``saved`` is not one of the run
    ``expected`` identifies: its method, its source model, its settings."""
    if not isinstance(saved, dict):
        return ["it records no run identity (written before checkpoints recorded their run)"]
    out = []
    if saved.get("method") != expected.get("method"):
        out.append(f"written by method {saved.get('method')!r}, this run is {expected.get('method')!r}")
    if saved.get("source") != expected.get("source"):
        out.append("written from another source model")
    for key in sorted((set(saved) | set(expected)) - {"method", "source"}):
        if not isinstance(saved.get(key), dict) or not isinstance(expected.get(key), dict):
            if saved.get(key) != expected.get(key):
                out.append(f"{key} was {saved.get(key)!r}, now {expected.get(key)!r}")
            continue
        was, now = _flat(saved[key]), _flat(expected[key])
        changed = [f"{k} was {was.get(k)!r}, now {now.get(k)!r}" for k in sorted(set(was) | set(now))
                   if was.get(k) != now.get(k)]
        if changed:
            more = f" (and {len(changed) - limit} more)" if len(changed) > limit else ""
            out.append(f"{key} differ: {', '.join(changed[:limit])}{more}")
    return out


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": leaf}``."""
    if not isinstance(value, dict) or not value:  # a leaf, or an empty dict kept as one
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
