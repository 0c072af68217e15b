"""One training loop for every method.

``train(model, loss_fn, images, config, teacher=...)`` runs ``config.steps``
optimiser steps of AdamW on random minibatches of ``images`` (with optional
horizontal flips), with gradient clipping, an EMA copy of the weights (decay
warm-up: ``ema.py``), an optional lr warm-up (``lr_schedule.py``), mixed
precision (``config.mixed_precision``: bf16/fp16 through accelerate),
data-parallel processes (DDP) and gradient accumulation, deterministic
seeding, a tqdm bar showing the loss terms, atomic checkpoints every
``checkpoint_every`` steps (keeping the last ``keep_checkpoints``) and resume
from the latest one, and a NaN/inf guard (:class:`NonFiniteLossError`) that
stops before a bad update is applied and never checkpoints non-finite weights.

``loss_fn(model, batch, teacher=teacher, generator=g) -> dict[str, Tensor]``
with key ``"loss"`` (see ``core/methods``).

Shards, accumulation and processes
----------------------------------
One optimiser step averages the gradients of ``K = num_processes *
gradient_accumulation_steps`` *shards*, each a minibatch of ``batch_size``
images, so the global batch is ``batch_size * num_processes *
gradient_accumulation_steps``. Process ``rank`` computes shards ``k = rank *
accum + micro`` for ``micro = 0 .. accum-1``, one micro-step each (its loss
divided by ``accum``, gradients summed locally, DDP averaging over the
processes on the last micro-step only); then one clip, one optimiser step, one
EMA update. Every random draw of shard ``k`` comes from streams that depend
only on ``(seed, k)``: a generator for the minibatch and flips (seed
``seed * 1_000_003 + k``), a generator handed to the loss for its noise and
timesteps (``seed * 1_000_003 + 7919 + k``), and the global torch RNG
(``seed + k``; dropout, say), swapped in per micro-step when a process holds
several shards. So 2 processes x 1 micro-step and 1 process x 2 micro-steps
compute the same shards and give the same run up to float reduction order,
and 1 process x 1 micro-step is shard 0 alone (the seeds of earlier versions).
History records average each loss term over all ``K`` shards of the step (an
all-reduce, identical on every rank) and over the ``log_every`` interval.

Checkpoints (written by the main process) store every shard's RNG state
(gathered from all ranks) under ``rng["shards"]``, keyed by ``k``, so a
resumed run ends exactly where an uninterrupted one would, for any number of
processes, and even when the same ``K`` is split differently (2 x 1 -> 1 x 2).
Shards missing from a checkpoint (an older format, or a larger ``K``) are
re-seeded from ``(seed, k, step)`` with a warning.

Multiple processes
------------------
With ``config.num_processes > 1``, ``train()`` called in an ordinary process
(a Kedro node under ``kedro run``) starts ``num_processes`` worker processes
itself (``spawn``; ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``,
``RANK``/``LOCAL_RANK``/``WORLD_SIZE``), so accelerate sets up gloo on CPU or
NCCL with one GPU per process (``cuda:<rank>``; at most
``torch.cuda.device_count()`` processes, which ``CUDA_VISIBLE_DEVICES``
restricts). No ``accelerate launch`` or ``torchrun`` around ``kedro run`` is
needed: on an 8-GPU node set ``num_processes: 8`` (and, for a larger global
batch than fits, ``gradient_accumulation_steps``). The workers train the same
model; rank 0 writes the checkpoints; the caller gets a :class:`TrainResult`
built from the final checkpoint, loaded into the caller's ``model`` (left on
its device) and a copy of it for the EMA. This needs ``checkpoint_dir`` (the
weights come back through it) and a picklable ``model``, ``loss_fn``,
``teacher``, ``conditions`` and ``on_log`` (module-level classes and functions,
not lambdas or local closures): they are written once to a scratch folder
inside ``checkpoint_dir`` and memory-mapped by the workers. ``on_log`` runs in
the rank-0 worker. An exception in a worker (:class:`NonFiniteLossError`, an
exception of ``on_log``...) stops every worker and is re-raised in the caller
with the worker's traceback as a note. Already inside a distributed run
(``torchrun`` / ``accelerate launch``: ``WORLD_SIZE > 1``), ``train()`` just
joins it; ``num_processes`` must then be 1 or the world size.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import pickle
import re
import shutil
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

from .ema import ema_decay_at, ema_update_, schedule_summary
from .lr_schedule import lr_at, set_lr_

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "checkpoint_paths", "train"]

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^step_(\d{7,})\.pt$")


class TrainConfig(BaseModel):
    """Optimisation settings. Unknown keys are rejected (naming the key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(ge=1, description="total optimiser steps")
    batch_size: int = Field(8, ge=1, description="minibatch size of one shard (per process and micro-step)")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="micro-steps (shards) per process and optimiser step"
    )
    num_processes: int = Field(
        1, ge=1, description="data-parallel processes (DDP); > 1 makes train() start them (needs checkpoint_dir)"
    )
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="0 disables the EMA")
    ema_warmup: Literal["diffusers", "power", "none"] = Field("diffusers", description="decay warm-up: see ema.py")
    ema_inv_gamma: float = Field(1.0, gt=0, description='"power" warm-up: 1 - (1 + s / inv_gamma) ** -power')
    ema_power: float = Field(2 / 3, gt=0)
    lr_warmup_steps: int = Field(0, ge=0, description="linear lr warm-up from 0 (see lr_schedule.py)")
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
    checkpoint: Path | None = None  # the checkpoint holding the returned weights (None without checkpoint_dir)
    schedule: dict[str, Any] = field(default_factory=dict)  # EMA and lr schedules reached (ema.schedule_summary)

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

    def __reduce__(self):  # picklable, so that a worker process can hand it back
        return (type(self), (self.step, self.terms, self.checkpoint))


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


# --- shards: per-(seed, k) random streams -----------------------------------------------


@dataclass
class _Shard:
    """The random streams of shard ``k``: minibatch/flips, the loss's
    generator, and the global torch RNG (held here only when the process
    computes several shards and swaps them in per micro-step)."""

    k: int
    batch: torch.Generator
    loss: torch.Generator
    torch_state: torch.Tensor | None = None
    cuda_state: torch.Tensor | None = None


def _shard_seeds(seed: int, k: int) -> tuple[int, int, int]:
    """(minibatch, loss, global torch) seeds of shard ``k``; shard 0 uses the
    seeds of the single-process loop of earlier versions."""
    return seed * 1_000_003 + k, seed * 1_000_003 + 7919 + k, seed + k


def _global_states(seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global CPU (and this device's CUDA) RNG state after ``torch.manual_seed(seed)``."""
    cpu = torch.Generator().manual_seed(seed).get_state()
    cuda = torch.Generator(device=device).manual_seed(seed).get_state() if device.type == "cuda" else None
    return cpu, cuda


def _make_shards(seed: int, ks: list[int], device: torch.device, swap: bool) -> list[_Shard]:
    shards = []
    for k in ks:
        b, l, g = _shard_seeds(seed, k)
        shard = _Shard(k, torch.Generator().manual_seed(b), torch.Generator(device=device).manual_seed(l))
        if swap:
            shard.torch_state, shard.cuda_state = _global_states(g, device)
        shards.append(shard)
    if not swap:
        torch.manual_seed(_shard_seeds(seed, ks[0])[2])
    return shards


@contextlib.contextmanager
def _shard_rng(shard: _Shard, device: torch.device, swap: bool):
    """Run a micro-step with ``shard``'s global torch RNG (when swapping)."""
    if not swap:
        yield
        return
    torch.set_rng_state(shard.torch_state)
    if shard.cuda_state is not None:
        torch.cuda.set_rng_state(shard.cuda_state, device)
    try:
        yield
    finally:
        shard.torch_state = torch.get_rng_state()
        if device.type == "cuda":
            shard.cuda_state = torch.cuda.get_rng_state(device)


def _shard_state(shard: _Shard, device: torch.device, swap: bool) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "k": shard.k,
        "batch": shard.batch.get_state(),
        "loss": shard.loss.get_state(),
        "torch": shard.torch_state if swap else torch.get_rng_state(),
        "cuda": (shard.cuda_state if swap else torch.cuda.get_rng_state(device)) if cuda else None,
    }


def _restore_shard(shard: _Shard, state: dict[str, Any], device: torch.device, swap: bool) -> None:
    shard.batch.set_state(state["batch"])
    shard.loss.set_state(state["loss"])
    cuda = state.get("cuda")
    if cuda is None and device.type == "cuda" and state.get("cuda_all") is not None:  # format 1
        all_devices = state["cuda_all"]
        cuda = all_devices[device.index or 0] if len(all_devices) > (device.index or 0) else None
    if swap:
        shard.torch_state = state["torch"]
        if device.type == "cuda" and cuda is not None:
            shard.cuda_state = cuda
    else:
        torch.set_rng_state(state["torch"])
        if device.type == "cuda" and cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def _reseed_shard(shard: _Shard, seed: int, step: int, device: torch.device, swap: bool) -> None:
    """Fresh streams for shard ``k`` at ``step`` (a checkpoint without its state)."""
    s = (seed * 1_000_003 + shard.k) * 7_777_777 + step
    shard.batch.manual_seed(s + 1)
    shard.loss.manual_seed(s + 2)
    if swap:
        shard.torch_state, shard.cuda_state = _global_states(s, device)
    else:
        torch.manual_seed(s)


def _stored_shards(rng: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Shard RNG states of a checkpoint by ``k`` (format 1: shard 0 only)."""
    if "shards" in rng:
        return {int(st["k"]): st for st in rng["shards"]}
    return {0: {"batch": rng["batch"], "loss": rng["loss"], "torch": rng["torch"], "cuda_all": rng.get("cuda")}}


def _all_gather(obj: Any, num_processes: int) -> list[Any]:
    if num_processes == 1:
        return [obj]
    out: list[Any] = [None] * num_processes
    torch.distributed.all_gather_object(out, obj)
    return out


def _in_distributed_run() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return True
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    except ValueError:
        return False


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
    called (in the main process) with each history record (after any
    checkpoint of that step). With ``config.num_processes > 1`` the worker
    processes are started here (see the module docstring; ``checkpoint_dir``
    is then required). Returns the trained model and its EMA (both in eval
    mode) and the history (one record every ``log_every`` steps: ``step``,
    the loss terms averaged over the shards and the interval, ``grad_norm``,
    ``lr``, ``sec_per_step``).
    """
    if isinstance(config, dict):
        config = TrainConfig(**config)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or dict, got {type(config).__name__}")
    _check_images(images, config.batch_size)
    if conditions is not None and (not isinstance(conditions, torch.Tensor) or conditions.shape[0] != images.shape[0]):
        got = tuple(conditions.shape) if isinstance(conditions, torch.Tensor) else type(conditions).__name__
        raise ValueError(f"conditions must be a tensor with one row per image ({images.shape[0]}), got {got}")
    if config.num_processes > 1 and not _in_distributed_run():
        return _launch(model, loss_fn, images, config, teacher=teacher, trainable_parameters=trainable_parameters,
                       conditions=conditions, checkpoint_dir=checkpoint_dir, progress=progress, desc=desc,
                       on_log=on_log)

    accelerator = _make_accelerator(config)
    device = accelerator.device
    rank = accelerator.process_index
    n_proc = accelerator.num_processes
    is_main = accelerator.is_main_process
    if config.num_processes not in (1, n_proc):
        raise ValueError(
            f"num_processes={config.num_processes} but this distributed run has {n_proc} processes; "
            f"set num_processes to {n_proc} (or 1 to take the launcher's), or run without the launcher"
        )
    accum = config.gradient_accumulation_steps
    n_shards = n_proc * accum
    swap = accum > 1  # several shards per process: swap their global RNG states in per micro-step
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    shards = _make_shards(config.seed, [rank * accum + m for m in range(accum)], device, swap)
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

    start = 0
    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    n_sum = 0
    resumed_from: int | None = None
    last_ckpt: Path | None = None
    missing: list[int] = []  # shards without a usable RNG state in the checkpoint
    stored_k: int | None = None

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
            stored = _stored_shards(payload["rng"])
            stored_k = len(stored) if "shards" in payload["rng"] else None
            for shard in shards:
                state = stored.get(shard.k)
                try:
                    if state is None:
                        raise KeyError(shard.k)
                    _restore_shard(shard, state, device, swap)
                except (KeyError, RuntimeError, ValueError, TypeError):
                    missing.append(shard.k)
                    _reseed_shard(shard, config.seed, start, device, swap)
            old = payload.get("config", {})
            legacy = {"ema_warmup": "none", "ema_inv_gamma": 1.0, "ema_power": 2 / 3, "lr_warmup_steps": 0}
            for key in ("batch_size", "seed", "lr", "mixed_precision", "ema_decay", *legacy):
                was = old.get(key, legacy.get(key)) if old else None  # legacy: checkpoints before the setting
                if was is not None and was != getattr(config, key):
                    log.warning("resuming %s: %s was %r, now %r", last_ckpt, key, was, getattr(config, key))
            if start > config.steps:
                log.warning("checkpoint %s is at step %d, beyond steps=%d", last_ckpt, start, config.steps)
            log.info("resumed from %s (step %d)", last_ckpt, start)
        gathered = _all_gather((start, missing), n_proc)
        if len({s for s, _ in gathered}) > 1:
            raise RuntimeError(
                f"the processes resumed from different steps {[s for s, _ in gathered]} in {str(ckpt_dir)!r}"
            )
        missing = sorted({k for _, ks in gathered for k in ks})
        if is_main and stored_k is not None and stored_k != n_shards:
            log.warning(
                "resuming %s: the global batch changed from %d to %d shard(s) (= %d process(es) x %d micro-step(s))",
                last_ckpt, stored_k, n_shards, n_proc, accum,
            )
        if is_main and missing and stored_k is not None:
            log.warning(
                "resuming %s: no usable RNG state for shard(s) %s; re-seeded them from the seed and the step",
                last_ckpt, missing,
            )

    def save_checkpoint(step: int) -> None:
        nonlocal last_ckpt
        path = ckpt_dir / f"step_{step:07d}.pt"  # type: ignore[operator]
        # every rank checks its (DDP-identical) weights, so that all stop together
        if not _all_finite(raw_model) or (ema is not None and not _all_finite(ema)):
            raise NonFiniteLossError(step, {"weights": float("nan")}, last_ckpt)
        shard_states = [st for per_rank in _all_gather([_shard_state(s, device, swap) for s in shards], n_proc)
                        for st in per_rank]
        if is_main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            payload = {
                "format": 2,
                "step": step,
                "model": raw_model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "rng": {
                    "shards": sorted(shard_states, key=lambda st: st["k"]),
                    "layout": {"num_processes": n_proc, "gradient_accumulation_steps": accum},
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
            names: list[str] | None = None
            acc: torch.Tensor | None = None  # this process's per-term sums over its shards
            for micro, shard in enumerate(shards):
                last_micro = micro == accum - 1
                sync = contextlib.nullcontext() if last_micro else accelerator.no_sync(model)
                with _shard_rng(shard, device, swap), sync:
                    batch, idx = _sample_batch(images, config.batch_size, shard.batch, config.hflip)
                    batch = batch.to(device)
                    if conditions is None:
                        terms = loss_fn(model, batch, teacher=teacher, generator=shard.loss)
                    else:  # e.g. ANL: each image with its own CLIP embedding
                        terms = loss_fn(model, batch, teacher=teacher, generator=shard.loss,
                                        condition=conditions[idx].to(device))
                    if "loss" not in terms:
                        raise KeyError("loss_fn must return a dict with key 'loss'")
                    if names is None:
                        names = list(terms)
                    elif list(terms) != names:
                        raise KeyError(f"loss_fn returned the terms {list(terms)} after {names} in the same step")
                    vec = torch.stack([terms[k].detach().float().reshape(()) for k in names]).double()
                    acc = vec if acc is None else acc + vec
                    # a non-finite loss only poisons .grad: checked below, before any update
                    accelerator.backward(terms["loss"] if accum == 1 else terms["loss"] / accum)
            assert acc is not None and names is not None
            if n_proc > 1:  # also stops every rank together on a non-finite term (no hung all-reduce)
                acc = accelerator.reduce(acc, reduction="sum")
            values = dict(zip(names, (acc / n_shards).tolist()))
            if not all(math.isfinite(v) for v in values.values()):
                raise NonFiniteLossError(done, values, last_ckpt)

            grad_norm = float("nan")
            if clip is not None and accelerator.sync_gradients:
                grad_norm = float(accelerator.clip_grad_norm_(params, clip))
                if not math.isfinite(grad_norm) and accelerator.scaler is None:
                    raise NonFiniteLossError(done, {**values, "grad_norm": grad_norm}, last_ckpt)
            set_lr_(optimizer, lr_at(done, config.lr, config.lr_warmup_steps))  # from the global step
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:  # once per optimiser step; the decay follows the global step
                ema_update_([e for e, _ in ema_pairs], [m for _, m in ema_pairs],
                            ema_decay_at(done, config.ema_decay, config.ema_warmup, config.ema_inv_gamma,
                                         config.ema_power))

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
            if record is not None and on_log is not None and is_main:
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
    return TrainResult(model=final, ema_model=ema, history=history, resumed_from_step=resumed_from,
                       checkpoint=last_ckpt, schedule=schedule_summary(config, max(start, config.steps)))


# --- several processes started from here ------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _picklable(obj: Any) -> Exception | None:
    try:
        torch.save(obj, io.BytesIO())
    except Exception as exc:  # PicklingError, AttributeError ("Can't pickle local object"), TypeError
        return exc
    return None


def _launch(
    model: torch.nn.Module,
    loss_fn: Callable[..., dict[str, torch.Tensor]],
    images: torch.Tensor,
    config: TrainConfig,
    *,
    teacher: torch.nn.Module | None,
    trainable_parameters: Iterable[torch.nn.Parameter] | None,
    conditions: torch.Tensor | None,
    checkpoint_dir: str | os.PathLike[str] | None,
    progress: bool,
    desc: str,
    on_log: Callable[[dict[str, float]], None] | None,
) -> TrainResult:
    """Start ``config.num_processes`` workers running :func:`train`, wait for
    them, and return the result read back from the final checkpoint."""
    n = config.num_processes
    if checkpoint_dir is None:
        raise ValueError(
            f"num_processes={n} needs a checkpoint_dir: the worker processes hand the trained weights back "
            "through the final checkpoint"
        )
    if torch.cuda.is_available() and n > torch.cuda.device_count():
        raise ValueError(
            f"num_processes={n} but only {torch.cuda.device_count()} GPU(s) are visible (one process per GPU)"
        )
    names: list[str] | None = None
    if trainable_parameters is not None:
        by_id = {id(p): name for name, p in model.named_parameters()}
        chosen = list(trainable_parameters)
        if any(id(p) not in by_id for p in chosen):
            raise ValueError("trainable_parameters must be parameters of model")
        names = [by_id[id(p)] for p in chosen]
        if not names:
            raise ValueError("no trainable parameters: trainable_parameters is empty")
    job = {"model": model, "loss_fn": loss_fn, "images": images, "config": config.model_dump(),
           "teacher": teacher, "trainable": names, "conditions": conditions, "checkpoint_dir": str(checkpoint_dir),
           "progress": progress, "desc": desc, "on_log": on_log}

    ckpt_dir = Path(checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".launch-", dir=ckpt_dir))
    try:
        try:
            torch.save(job, scratch / "job.pt")
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            culprit = next((k for k in ("loss_fn", "on_log", "model", "teacher", "conditions")
                            if job[k] is not None and _picklable(job[k]) is not None), "an argument")
            raise TypeError(
                f"num_processes={n} trains in {n} worker processes, which need {culprit} to be picklable "
                f"(module-level classes and functions, not lambdas or local closures): {type(exc).__name__}: {exc}"
            ) from exc
        del job
        threads = max(1, torch.get_num_threads() // n)  # intra-op threads per worker: share the cores
        port = _free_port()
        log.info("starting %d training processes (rendezvous on 127.0.0.1:%d)", n, port)
        ctx = torch.multiprocessing.start_processes(
            _worker, args=(n, port, str(scratch), threads), nprocs=n, join=False, start_method="spawn"
        )
        try:
            while not ctx.join():
                pass
        except (torch.multiprocessing.ProcessRaisedException, torch.multiprocessing.ProcessExitedException) as exc:
            raise _worker_error(scratch, n, exc) from None
        finally:  # the caller was interrupted (or a worker failed): stop the rest
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.terminate()
            for proc in ctx.processes:
                proc.join()
        info = torch.load(scratch / "result.pt", weights_only=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    checkpoint = Path(info["checkpoint"])
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["model"])
    model.eval()
    ema = None
    if config.ema_decay > 0:
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        ema.load_state_dict(payload["ema"] if payload.get("ema") is not None else payload["model"])
        with torch.no_grad():  # buffers (e.g. running stats) follow the live model, as in train()
            for be, bm in zip(ema.buffers(), model.buffers()):
                be.copy_(bm)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    resumed = info["resumed_from_step"]
    return TrainResult(model=model, ema_model=ema, history=list(payload.get("history", [])),
                       resumed_from_step=None if resumed < 0 else int(resumed), checkpoint=checkpoint,
                       schedule=schedule_summary(config, int(payload["step"])))


def _worker_error(scratch: Path, n: int, exc: Exception) -> BaseException:
    """The exception that stopped the workers (the first one raised), with the
    worker's traceback as a note; else a RuntimeError."""
    reports = []
    for path in scratch.glob("error-*.pkl"):
        try:
            with open(path, "rb") as fh:
                reports.append(pickle.load(fh))
        except Exception:  # noqa: BLE001 - a half-written report
            continue
    if not reports:
        return RuntimeError(f"a training process (of {n}) failed: {exc}")
    first = min(reports, key=lambda r: r["time"])
    where = f"in training process {first['rank']} of {n}"
    err: BaseException | None = None
    if first["exc"] is not None:
        try:
            err = pickle.loads(first["exc"])
        except Exception:  # noqa: BLE001 - not reconstructible here
            err = None
    if not isinstance(err, BaseException):
        return RuntimeError(f"{where}:\n{first['traceback']}")
    err.add_note(f"raised {where}; its traceback:\n{first['traceback']}")
    return err


def _worker(rank: int, n: int, port: int, scratch: str, threads: int) -> None:
    """One spawned training process: rank ``rank`` of ``n``."""
    os.environ.update({
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(n), "RANK": str(rank),
        "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(n), "OMP_NUM_THREADS": str(threads),
    })
    torch.set_num_threads(threads)
    folder = Path(scratch)
    try:
        job = torch.load(folder / "job.pt", map_location="cpu", weights_only=False, mmap=True)
        model = job["model"]
        params = None
        if job["trainable"] is not None:
            by_name = dict(model.named_parameters())
            params = [by_name[name] for name in job["trainable"]]
        result = train(model, job["loss_fn"], job["images"], job["config"], teacher=job["teacher"],
                       trainable_parameters=params, conditions=job["conditions"],
                       checkpoint_dir=job["checkpoint_dir"], progress=job["progress"], desc=job["desc"],
                       on_log=job["on_log"])
        if rank == 0:
            if result.checkpoint is None:
                raise RuntimeError("training ended without a checkpoint")
            info = {"checkpoint": str(result.checkpoint),
                    "resumed_from_step": -1 if result.resumed_from_step is None else result.resumed_from_step}
            torch.save(info, folder / "result.pt")
    except BaseException as exc:
        try:
            blob: bytes | None = pickle.dumps(exc)
        except Exception:  # noqa: BLE001 - unpicklable: the traceback text still goes back
            blob = None
        report = {"rank": rank, "time": time.time(), "traceback": traceback.format_exc(), "exc": blob}
        tmp = folder / f".error-{rank}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(report, fh)
        os.replace(tmp, folder / f"error-{rank}.pkl")
        raise
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group()
