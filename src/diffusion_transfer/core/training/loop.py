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

Random streams per shard: ``rng.py``; checkpoints: ``checkpoint.py``; worker
processes started from a Kedro node: ``launch.py``; settings: ``config.py``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from .checkpoint import _all_finite, _atomic_save, checkpoint_paths, load_usable
from .config import NonFiniteLossError, TrainConfig, TrainResult
from .ema import ema_decay_at, ema_update_, schedule_summary
from .launch import _launch
from .lr_schedule import lr_at, set_lr_
from .rng import (_all_gather, _in_distributed_run, _make_shards, _reseed_shard, _restore_shard, _shard_rng,
                  _shard_state, _stored_shards)

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "checkpoint_paths", "train"]

log = logging.getLogger(__name__)

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
        found = load_usable(ckpt_dir, raw_model, optimizer, ema, config)  # skips unusable ones, saying why
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
