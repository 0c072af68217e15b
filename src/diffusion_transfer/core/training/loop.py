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

``train()`` reads as NVlabs/edm's ``training_loop``, in sections: Setup,
Resume, Train (with Checkpoint and Log inside), Done. Random streams per
shard: ``rng.py``; checkpoint files: ``checkpoint.py``; worker processes
started from a Kedro node: ``launch.py``; settings: ``config.py``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from diffusion_transfer.core.models.latent import latent_codec_of

from .checkpoint import _all_finite, _atomic_save, checkpoint_paths, load_usable
from .config import NonFiniteLossError, TrainConfig, TrainResult
from .ema import ema_decay_at, ema_update_, schedule_summary
from .launch import launch_workers
from .lr_schedule import lr_at, set_lr_
from .rng import all_gather, in_distributed_run, reseed_shard, restore_shard, shard_rng, shard_state, stored_shards
from .run import Run, as_config, check_inputs, hand_back

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "checkpoint_paths", "train"]

log = logging.getLogger(__name__)

# Settings a resumed run warns about when they changed, with the values checkpoints
# written before the setting existed imply.
_COMPARED_ON_RESUME = ("batch_size", "seed", "lr", "mixed_precision", "ema_decay")
_LEGACY_DEFAULTS = {"ema_warmup": "none", "ema_inv_gamma": 1.0, "ema_power": 2 / 3, "lr_warmup_steps": 0}


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
    latents: bool | None = None,
    run_identity: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` with ``loss_fn`` on ``images`` (N, 3, H, W) in [-1, 1] (with ``latents``, default:
    ``model`` has a latent codec, a latent model's latents (N, C, H, W) of any finite value).

    ``trainable_parameters`` defaults to every parameter of ``model`` that requires grad (freeze the rest
    beforehand). ``conditions`` (N, ...), one per image, are handed to the loss as ``condition=`` for the
    minibatch (ANL's CLIP embeddings; the embedding of the unflipped image under hflip). The ``teacher``, if given, is
    moved to the device, put in eval mode and frozen (``config.channels_last``: see ``run.hand_back``). With
    ``checkpoint_dir`` the run checkpoints every ``config.checkpoint_every`` steps and at the end, and resumes
    from the newest usable checkpoint found there (of this ``run_identity`` only, if given: ``checkpoint.py``).
    ``on_log(record)`` is called (in the main process) with each history record (after any checkpoint of that
    step). With ``config.num_processes > 1`` the worker processes are started here (see ``launch.py``;
    ``checkpoint_dir`` is then required). Returns the trained model and its EMA (both in eval mode) and the
    history (one record every ``log_every`` steps: ``step``, the loss terms averaged over the shards and the
    interval, ``grad_norm``, ``lr``, ``sec_per_step``).
    """
    # Setup: settings, inputs, processes and their shards.
    config = as_config(config)
    check_inputs(images, conditions, latents=latent_codec_of(model) is not None if latents is None else latents)
    if config.num_processes > 1 and not in_distributed_run():
        return launch_workers(train, model, loss_fn, images, config, teacher=teacher, latents=latents,
                              trainable_parameters=trainable_parameters, conditions=conditions, desc=desc,
                              checkpoint_dir=checkpoint_dir, progress=progress, on_log=on_log,
                              run_identity=run_identity)
    run = Run.start(config, checkpoint_dir, run_identity)

    # Setup: model, EMA, teacher, optimiser (prepared by accelerate).
    model, optimizer = run.prepare(model, trainable_parameters, teacher)

    # Resume from the newest usable checkpoint in checkpoint_dir, if any.
    state = _resume(run) if run.ckpt_dir is not None else _State()
    start = state.step

    # Train.
    pbar = tqdm(total=config.steps, initial=min(start, config.steps), desc=desc,
                disable=not progress or not run.is_main, dynamic_ncols=True)
    t_last = time.perf_counter()
    try:
        for step in range(start, config.steps):
            done = step + 1
            values = _accumulate_gradients(run, model, loss_fn, images, conditions, teacher)
            if not all(math.isfinite(v) for v in values.values()):
                raise NonFiniteLossError(done, values, state.last_ckpt)

            grad_norm = _update(run, optimizer, values, done, state.last_ckpt)
            state.add(values, grad_norm)
            pbar.update(1)
            pbar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

            # Log (averages over the interval), then Checkpoint, then hand the record on.
            record = None
            if done % config.log_every == 0 or done == config.steps:
                now = time.perf_counter()
                record = state.close_interval(done, optimizer.param_groups[0]["lr"], now - t_last)
                t_last = now
            if run.ckpt_dir is not None and (done % config.checkpoint_every == 0 or done == config.steps):
                state.last_ckpt = _save_checkpoint(run, state, done)
            if record is not None and on_log is not None and run.is_main:
                on_log(record)
    finally:
        pbar.close()
        hand_back(run, run.raw_model)  # also when a step fails: the caller's models in their own layout

    # Done.
    return _result(run, model, state, start)


# --- progress, resume, checkpoints ------------------------------------------------------


@dataclass
class _State:
    """Where the run is: the step reached, the history and the open logging
    interval (what a checkpoint stores besides weights and RNG), and the
    latest checkpoint."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)
    n_sum: int = 0
    resumed_from: int | None = None
    last_ckpt: Path | None = None

    def add(self, values: dict[str, float], grad_norm: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        if math.isfinite(grad_norm):
            self.sums["grad_norm"] = self.sums.get("grad_norm", 0.0) + grad_norm
        self.n_sum += 1

    def close_interval(self, step: int, lr: float, seconds: float) -> dict[str, float]:
        """The history record of the interval ending at ``step``; starts the next one."""
        record = {"step": step, **{k: v / self.n_sum for k, v in self.sums.items()}}
        record["lr"] = lr
        record["sec_per_step"] = seconds / self.n_sum
        self.history.append(record)
        self.sums, self.n_sum = {}, 0
        return record


def _resume(run: Run) -> _State:
    """The state of the newest usable checkpoint in ``run.ckpt_dir``, loaded
    into the model, EMA, optimiser and shards; a fresh state without one.
    Every process must resume from the same step."""
    state, missing, stored_k = _State(), [], None
    found = load_usable(run.ckpt_dir, run.raw_model, run.optimizer, run.ema, run.config,  # skips unusable ones
                        run.identity)  # and those of another run
    _say_where_resuming(run, found)
    if found is not None:
        payload, state.last_ckpt = found
        _load_weights(run, payload, state.last_ckpt)
        state.step = state.resumed_from = int(payload["step"])
        state.history = list(payload.get("history", []))
        state.sums = dict(payload.get("sums", {}))
        state.n_sum = int(payload.get("n_sum", 0))
        stored = stored_shards(payload["rng"])
        stored_k = len(stored) if "shards" in payload["rng"] else None
        for shard in run.shards:
            try:
                if shard.k not in stored:
                    raise KeyError(shard.k)
                restore_shard(shard, stored[shard.k], run.device, run.swap)
            except (KeyError, RuntimeError, ValueError, TypeError):
                missing.append(shard.k)
                reseed_shard(shard, run.config.seed, state.step, run.device, run.swap)
        _warn_changed_settings(state.last_ckpt, payload.get("config", {}), run.config, state.step)
    gathered = all_gather((state.step, missing), run.n_proc)
    if len({s for s, _ in gathered}) > 1:
        raise RuntimeError(
            f"the processes resumed from different steps {[s for s, _ in gathered]} in {str(run.ckpt_dir)!r}"
        )
    missing = sorted({k for _, ks in gathered for k in ks})
    if run.is_main and stored_k is not None and stored_k != run.n_shards:
        log.warning(
            "resuming %s: the global batch changed from %d to %d shard(s) (= %d process(es) x %d micro-step(s))",
            state.last_ckpt, stored_k, run.n_shards, run.n_proc, run.config.gradient_accumulation_steps,
        )
    if run.is_main and missing and stored_k is not None:
        log.warning("resuming %s: no usable RNG state for shard(s) %s; re-seeded them from the seed and the step",
                    state.last_ckpt, missing)
    return state


def _say_where_resuming(run: Run, found: tuple[dict[str, Any], Path] | None) -> None:
    """One line: the step and checkpoint resumed (a warning when newer ones
    were skipped: a fall-back), or a fresh start when checkpoints exist but
    none is this run's."""
    existing = checkpoint_paths(run.ckpt_dir)
    if found is None:
        if existing and run.is_main:
            log.warning("no checkpoint of this run in %s (%d skipped): starting fresh", run.ckpt_dir, len(existing))
        return
    step, path = int(found[0]["step"]), found[1]
    skipped = existing[existing.index(path) + 1:] if path in existing else []  # oldest first
    if skipped and run.is_main:
        log.warning("resuming from step %d of %s (fell back past %d newer checkpoint(s))", step, path, len(skipped))
    elif run.is_main:
        log.info("resuming from step %d of %s", step, path)


def _load_weights(run: Run, payload: dict[str, Any], path: Path) -> None:
    try:
        run.raw_model.load_state_dict(payload["model"])
        if run.ema is not None:
            run.ema.load_state_dict(payload["ema"] if payload.get("ema") is not None else payload["model"])
        run.optimizer.load_state_dict(payload["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise RuntimeError(
            f"checkpoint {str(path)!r} does not match this model/optimizer ({exc}); "
            f"delete {str(run.ckpt_dir)!r} to start over"
        ) from exc
    if run.accelerator.scaler is not None and payload.get("scaler") is not None:
        run.accelerator.scaler.load_state_dict(payload["scaler"])


def _warn_changed_settings(ckpt: Path, old: dict[str, Any], config: TrainConfig, step: int) -> None:
    for key in (*_COMPARED_ON_RESUME, *_LEGACY_DEFAULTS):
        was = old.get(key, _LEGACY_DEFAULTS.get(key)) if old else None  # legacy: checkpoints before the setting
        if was is not None and was != getattr(config, key):
            log.warning("resuming %s: %s was %r, now %r", ckpt, key, was, getattr(config, key))
    if step > config.steps:
        log.warning("checkpoint %s is at step %d, beyond steps=%d", ckpt, step, config.steps)


def _save_checkpoint(run: Run, state: _State, step: int) -> Path:
    """Write ``step_NNNNNNN.pt`` (main process; every shard's RNG gathered
    from all ranks), drop the oldest beyond ``keep_checkpoints``; returns its path."""
    path = run.ckpt_dir / f"step_{step:07d}.pt"
    # every rank checks its (DDP-identical) weights, so that all stop together
    if not _all_finite(run.raw_model) or (run.ema is not None and not _all_finite(run.ema)):
        raise NonFiniteLossError(step, {"weights": float("nan")}, state.last_ckpt)
    shard_states = [st for per_rank in all_gather([shard_state(s, run.device, run.swap) for s in run.shards],
                                                  run.n_proc) for st in per_rank]
    if run.is_main:
        run.ckpt_dir.mkdir(parents=True, exist_ok=True)
        scaler = run.accelerator.scaler
        _atomic_save({
            "format": 2, "step": step, "model": run.raw_model.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "optimizer": run.optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {"shards": sorted(shard_states, key=lambda st: st["k"]),
                    "layout": {"num_processes": run.n_proc,
                               "gradient_accumulation_steps": run.config.gradient_accumulation_steps}},
            "history": state.history, "sums": state.sums, "n_sum": state.n_sum,
            "config": run.config.model_dump(), "run_identity": run.identity,
        }, path)
        for old in checkpoint_paths(run.ckpt_dir)[: -run.config.keep_checkpoints]:
            old.unlink(missing_ok=True)
    run.accelerator.wait_for_everyone()
    return path


def _update(run: Run, optimizer: Any, values: dict[str, float], done: int, last_ckpt: Path | None) -> float:
    """Clip, set the lr, step the optimiser, update the EMA; returns the
    gradient norm before clipping (nan without clipping)."""
    config, accelerator = run.config, run.accelerator
    grad_norm = float("nan")
    if config.grad_clip and accelerator.sync_gradients:
        grad_norm = float(accelerator.clip_grad_norm_(run.params, config.grad_clip))
        if not math.isfinite(grad_norm) and accelerator.scaler is None:
            raise NonFiniteLossError(done, {**values, "grad_norm": grad_norm}, last_ckpt)
    set_lr_(optimizer, lr_at(done, config.lr, config.lr_warmup_steps))  # from the global step
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:  # once per optimiser step; the decay follows the global step
        ema_update_([e for e, _ in run.ema_pairs], [m for _, m in run.ema_pairs],
                    ema_decay_at(done, config.ema_decay, config.ema_warmup, config.ema_inv_gamma, config.ema_power))
    return grad_norm


def _result(run: Run, model: torch.nn.Module, state: _State, start: int) -> TrainResult:
    """The live model and its EMA, both in eval mode, with the run's history."""
    final = run.accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # run.raw_model, handed back by train()
    final.eval()
    if run.ema is not None:
        # buffers (e.g. running stats) follow the live model
        with torch.no_grad():
            for be, bm in zip(run.ema.buffers(), final.buffers()):
                be.copy_(bm)
    return TrainResult(model=final, ema_model=run.ema, history=state.history, resumed_from_step=state.resumed_from,
                       checkpoint=state.last_ckpt, schedule=schedule_summary(run.config, max(start, run.config.steps)))


# --- one optimiser step's gradients -------------------------------------------------------


def _accumulate_gradients(run: Run, model: torch.nn.Module, loss_fn: Callable[..., dict[str, torch.Tensor]],
                          images: torch.Tensor, conditions: torch.Tensor | None,
                          teacher: torch.nn.Module | None) -> dict[str, float]:
    """Backward passes of this process's shards (one micro-step each, DDP
    averaging on the last); returns each loss term averaged over all shards."""
    accum, device, batch_size = run.config.gradient_accumulation_steps, run.device, run.config.batch_size
    names: list[str] | None = None
    acc: torch.Tensor | None = None  # this process's per-term sums over its shards
    for micro, shard in enumerate(run.shards):
        sync = contextlib.nullcontext() if micro == accum - 1 else run.accelerator.no_sync(model)
        with shard_rng(shard, device, run.swap), sync:
            batch, idx = _sample_batch(images, batch_size, shard.batch, run.config.hflip)
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
            # a non-finite loss only poisons .grad: checked by the caller, before any update
            run.accelerator.backward(terms["loss"] if accum == 1 else terms["loss"] / accum)
    assert acc is not None and names is not None
    if run.n_proc > 1:  # also stops every rank together on a non-finite term (no hung all-reduce)
        acc = run.accelerator.reduce(acc, reduction="sum")
    return dict(zip(names, (acc / run.n_shards).tolist()))


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
