"""One training loop for every method.

``train(model, loss_fn, images, config, teacher=...)`` runs ``config.steps``
optimiser steps of AdamW on random minibatches of ``images`` (with optional
horizontal flips), with gradient clipping, an EMA copy of the weights, mixed
precision / multi-process through accelerate, deterministic seeding, a tqdm bar
showing the loss terms, atomic checkpoints every ``checkpoint_every`` steps
(keeping the last ``keep_checkpoints``) and resume from the latest one, and a
NaN/inf guard (:class:`NonFiniteLossError`) that stops before a bad update is
applied and never checkpoints non-finite weights.

``loss_fn(model, batch, teacher=teacher, generator=g) -> dict[str, Tensor]``
with key ``"loss"`` (see ``core/methods``). Two generators make runs
reproducible: one draws the minibatches and flips, the other is handed to the
loss for its noise and timesteps; both (and the global torch RNG) are stored
in checkpoints, so a resumed run ends where an uninterrupted one would.
With several processes (DDP) each rank draws its own minibatches from
``seed + rank``; checkpoints are written by the main process and carry its
RNG state; other ranks re-derive theirs from the seed and the step on resume.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "checkpoint_paths", "train"]

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^step_(\d{7,})\.pt$")


class TrainConfig(BaseModel):
    """Optimisation settings. Unknown keys are rejected (naming the key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(ge=1, description="total optimiser steps")
    batch_size: int = Field(8, ge=1, description="minibatch size per process")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="0 disables the EMA")
    grad_clip: float | None = Field(1.0, description="max global grad norm; null or 0 disables")
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    hflip: bool = True

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"betas must both be in [0, 1), got {v}")
        return v

    @field_validator("grad_clip")
    @classmethod
    def _clip(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v < 0):
            raise ValueError(f"grad_clip must be >= 0 or null, got {v}")
        return v


@dataclass
class TrainResult:
    model: torch.nn.Module
    ema_model: torch.nn.Module | None  # None when ema_decay == 0
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int | None = None

    @property
    def final_model(self) -> torch.nn.Module:
        """The EMA model when there is one, else the trained model."""
        return self.ema_model if self.ema_model is not None else self.model


class NonFiniteLossError(RuntimeError):
    """A loss term (or the gradient norm) became NaN/inf; training stopped
    before applying the update. The last good checkpoint is kept."""

    def __init__(self, step: int, terms: dict[str, float], checkpoint: Path | None) -> None:
        self.step = step
        self.terms = terms
        self.checkpoint = checkpoint
        bad = [k for k, v in terms.items() if not math.isfinite(v)]
        shown = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
        kept = (
            f"the last good checkpoint {str(checkpoint)!r} is kept (rerun to resume from it, e.g. with a lower lr)"
            if checkpoint is not None
            else "no checkpoint had been written yet"
        )
        super().__init__(
            f"non-finite {', '.join(bad)} at step {step} ({shown}); training stopped before the update, {kept}"
        )


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


# --- helpers ----------------------------------------------------------------------


def _check_images(images: torch.Tensor, batch_size: int) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a float tensor (N, 3, H, W) in [-1, 1], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: nothing to train on")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [-1, 1], got dtype {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1.001 or hi > 1.001:
        raise ValueError(f"images must lie in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]")


def _make_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = not torch.cuda.is_available()
    try:
        return Accelerator(mixed_precision=config.mixed_precision, cpu=cpu)
    except ValueError as exc:
        if "already been initialized" not in str(exc):
            raise
        # An earlier train() in this process used another precision: reset the
        # shared accelerator state (not the process group) and retry.
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(mixed_precision=config.mixed_precision, cpu=cpu)


def _sample_batch(
    images: torch.Tensor, batch_size: int, gen: torch.Generator, hflip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    n = images.shape[0]
    if n >= batch_size:
        idx = torch.randperm(n, generator=gen)[:batch_size]
    else:
        idx = torch.randint(0, n, (batch_size,), generator=gen)
    batch = images[idx.to(images.device)]
    if hflip:
        flip = (torch.rand(batch_size, generator=gen) < 0.5).to(batch.device).view(-1, 1, 1, 1)
        batch = torch.where(flip, batch.flip(-1), batch)
    return batch, idx


def _fmt(v: float) -> str:
    return f"{v:.4g}"


# --- the loop -----------------------------------------------------------------------


def train(
    model: torch.nn.Module,
    loss_fn: Callable[..., dict[str, torch.Tensor]],
    images: torch.Tensor,
    config: TrainConfig | dict[str, Any],
    *,
    teacher: torch.nn.Module | None = None,
    trainable_parameters: Iterable[torch.nn.Parameter] | None = None,
    conditions: torch.Tensor | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    desc: str = "train",
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` with ``loss_fn`` on ``images`` (N, 3, H, W) in [-1, 1].

    ``trainable_parameters`` defaults to every parameter of ``model`` that
    requires grad (freeze the rest beforehand). ``conditions`` (N, ...), one
    per image, are handed to the loss as ``condition=`` for the minibatch
    (ANL's CLIP embeddings; the embedding of the unflipped image under hflip). The ``teacher``, if given, is
    moved to the device, put in eval mode and frozen. With ``checkpoint_dir``
    the run checkpoints every ``config.checkpoint_every`` steps and at the end,
    and resumes from the latest checkpoint found there. ``on_log(record)`` is
    called with each history record (after any checkpoint of that step).
    Returns the trained model and its EMA (both in eval mode) and the history
    (one record every ``log_every`` steps: ``step``, the loss terms averaged
    over the interval, ``grad_norm``, ``lr``, ``sec_per_step``).
    """
    if isinstance(config, dict):
        config = TrainConfig(**config)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or dict, got {type(config).__name__}")
    _check_images(images, config.batch_size)
    if conditions is not None and (not isinstance(conditions, torch.Tensor) or conditions.shape[0] != images.shape[0]):
        got = tuple(conditions.shape) if isinstance(conditions, torch.Tensor) else type(conditions).__name__
        raise ValueError(f"conditions must be a tensor with one row per image ({images.shape[0]}), got {got}")

    accelerator = _make_accelerator(config)
    device = accelerator.device
    rank = accelerator.process_index
    is_main = accelerator.is_main_process
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    torch.manual_seed(config.seed + rank)
    model.to(device)
    model.train()
    if trainable_parameters is None:
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        params = list(trainable_parameters)
    if not params:
        raise ValueError("no trainable parameters: every parameter of the model is frozen")
    model_param_ids = {id(p) for p in model.parameters()}
    if any(id(p) not in model_param_ids for p in params):
        raise ValueError("trainable_parameters must be parameters of model")

    ema: torch.nn.Module | None = None
    ema_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    if config.ema_decay > 0:
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        trainable = {id(p) for p in params}
        ema_pairs = [
            (pe, pm) for pe, pm in zip(ema.parameters(), model.parameters()) if id(pm) in trainable
        ]

    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)

    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=config.betas, eps=config.adam_eps, weight_decay=config.weight_decay
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    batch_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + rank)
    loss_gen = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + 7919 + rank)

    start = 0
    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    n_sum = 0
    resumed_from: int | None = None
    last_ckpt: Path | None = None

    if ckpt_dir is not None:
        found = _load_latest(ckpt_dir)
        if found is not None:
            payload, last_ckpt = found
            try:
                raw_model.load_state_dict(payload["model"])
                if ema is not None and payload.get("ema") is not None:
                    ema.load_state_dict(payload["ema"])
                elif ema is not None:
                    ema.load_state_dict(payload["model"])
                optimizer.load_state_dict(payload["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise RuntimeError(
                    f"checkpoint {str(last_ckpt)!r} does not match this model/optimizer ({exc}); "
                    f"delete {str(ckpt_dir)!r} to start over"
                ) from exc
            if accelerator.scaler is not None and payload.get("scaler") is not None:
                accelerator.scaler.load_state_dict(payload["scaler"])
            start = int(payload["step"])
            resumed_from = start
            history = list(payload.get("history", []))
            sums = dict(payload.get("sums", {}))
            n_sum = int(payload.get("n_sum", 0))
            rng = payload["rng"]
            if rank == 0:
                torch.set_rng_state(rng["torch"])
                if rng.get("cuda") is not None and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(rng["cuda"])
                batch_gen.set_state(rng["batch"])
                loss_gen.set_state(rng["loss"])
            else:
                s = (config.seed * 1_000_003 + rank) * 7_777_777 + start
                torch.manual_seed(s)
                batch_gen.manual_seed(s + 1)
                loss_gen.manual_seed(s + 2)
            old = payload.get("config", {})
            for key in ("batch_size", "seed", "lr", "mixed_precision"):
                if key in old and old[key] != getattr(config, key):
                    log.warning("resuming %s: %s was %r, now %r", last_ckpt, key, old[key], getattr(config, key))
            if start > config.steps:
                log.warning("checkpoint %s is at step %d, beyond steps=%d", last_ckpt, start, config.steps)
            log.info("resumed from %s (step %d)", last_ckpt, start)

    def save_checkpoint(step: int) -> None:
        nonlocal last_ckpt
        path = ckpt_dir / f"step_{step:07d}.pt"  # type: ignore[operator]
        if is_main:
            if not _all_finite(raw_model) or (ema is not None and not _all_finite(ema)):
                raise NonFiniteLossError(step, {"weights": float("nan")}, last_ckpt)
            ckpt_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            payload = {
                "format": 1,
                "step": step,
                "model": raw_model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "batch": batch_gen.get_state(),
                    "loss": loss_gen.get_state(),
                },
                "history": history,
                "sums": sums,
                "n_sum": n_sum,
                "config": config.model_dump(),
            }
            _atomic_save(payload, path)
            for old in checkpoint_paths(ckpt_dir)[: -config.keep_checkpoints]:
                old.unlink(missing_ok=True)
        accelerator.wait_for_everyone()
        last_ckpt = path

    pbar = tqdm(
        total=config.steps, initial=min(start, config.steps), desc=desc,
        disable=not progress or not is_main, dynamic_ncols=True,
    )
    clip = config.grad_clip if config.grad_clip else None
    t_last = time.perf_counter()
    try:
        for step in range(start, config.steps):
            done = step + 1
            batch, idx = _sample_batch(images, config.batch_size, batch_gen, config.hflip)
            batch = batch.to(device)
            if conditions is None:
                terms = loss_fn(model, batch, teacher=teacher, generator=loss_gen)
            else:  # e.g. ANL: each image with its own CLIP embedding
                terms = loss_fn(model, batch, teacher=teacher, generator=loss_gen,
                                condition=conditions[idx].to(device))
            if "loss" not in terms:
                raise KeyError("loss_fn must return a dict with key 'loss'")
            names = list(terms)
            vals = torch.stack([terms[k].detach().float().reshape(()) for k in names]).cpu().tolist()
            values = dict(zip(names, vals))
            bad = not all(math.isfinite(v) for v in vals)
            if accelerator.num_processes > 1:  # stop every rank together (no hung all-reduce)
                flag = torch.tensor([float(bad)], device=device)
                bad = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
            if bad:
                raise NonFiniteLossError(done, values, last_ckpt)

            accelerator.backward(terms["loss"])
            grad_norm = float("nan")
            if clip is not None and accelerator.sync_gradients:
                grad_norm = float(accelerator.clip_grad_norm_(params, clip))
                if not math.isfinite(grad_norm) and accelerator.scaler is None:
                    raise NonFiniteLossError(done, {**values, "grad_norm": grad_norm}, last_ckpt)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_([e for e, _ in ema_pairs], [m for _, m in ema_pairs], 1.0 - config.ema_decay)

            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            if math.isfinite(grad_norm):
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm
            n_sum += 1
            pbar.update(1)
            pbar.set_postfix({k: _fmt(v) for k, v in values.items()}, refresh=False)

            record = None
            if done % config.log_every == 0 or done == config.steps:
                now = time.perf_counter()
                record = {"step": done, **{k: v / n_sum for k, v in sums.items()}}
                record["lr"] = optimizer.param_groups[0]["lr"]
                record["sec_per_step"] = (now - t_last) / n_sum
                t_last = now
                history.append(record)
                sums, n_sum = {}, 0
            if ckpt_dir is not None and (done % config.checkpoint_every == 0 or done == config.steps):
                save_checkpoint(done)
            if record is not None and on_log is not None:
                on_log(record)
    finally:
        pbar.close()

    final = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    final.eval()
    if ema is not None:
        # buffers (e.g. running stats) follow the live model
        with torch.no_grad():
            for be, bm in zip(ema.buffers(), final.buffers()):
                be.copy_(bm)
    return TrainResult(model=final, ema_model=ema, history=history, resumed_from_step=resumed_from)
