"""Shards, accumulation and processes
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
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

# --- shards: per-(seed, k) random streams -----------------------------------------------


@dataclass
class Shard:
    """The random streams of shard ``k``: minibatch/flips, the loss's
    generator, and the global torch RNG (held here only when the process
    computes several shards and swaps them in per micro-step)."""

    k: int
    batch: torch.Generator
    loss: torch.Generator
    torch_state: torch.Tensor | None = None
    cuda_state: torch.Tensor | None = None


def shard_seeds(seed: int, k: int) -> tuple[int, int, int]:
    """(minibatch, loss, global torch) seeds of shard ``k``; shard 0 uses the
    seeds of the single-process loop of earlier versions."""
    return seed * 1_000_003 + k, seed * 1_000_003 + 7919 + k, seed + k


def global_states(seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global CPU (and this device's CUDA) RNG state after ``torch.manual_seed(seed)``."""
    cpu = torch.Generator().manual_seed(seed).get_state()
    cuda = torch.Generator(device=device).manual_seed(seed).get_state() if device.type == "cuda" else None
    return cpu, cuda


def make_shards(seed: int, ks: list[int], device: torch.device, swap: bool) -> list[Shard]:
    shards = []
    for k in ks:
        b, l, g = shard_seeds(seed, k)
        shard = Shard(k, torch.Generator().manual_seed(b), torch.Generator(device=device).manual_seed(l))
        if swap:
            shard.torch_state, shard.cuda_state = global_states(g, device)
        shards.append(shard)
    if not swap:
        torch.manual_seed(shard_seeds(seed, ks[0])[2])
    return shards


@contextlib.contextmanager
def shard_rng(shard: Shard, device: torch.device, swap: bool):
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


def shard_state(shard: Shard, device: torch.device, swap: bool) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "k": shard.k,
        "batch": shard.batch.get_state(),
        "loss": shard.loss.get_state(),
        "torch": shard.torch_state if swap else torch.get_rng_state(),
        "cuda": (shard.cuda_state if swap else torch.cuda.get_rng_state(device)) if cuda else None,
    }


def restore_shard(shard: Shard, state: dict[str, Any], device: torch.device, swap: bool) -> None:
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


def reseed_shard(shard: Shard, seed: int, step: int, device: torch.device, swap: bool) -> None:
    """Fresh streams for shard ``k`` at ``step`` (a checkpoint without its state)."""
    s = (seed * 1_000_003 + shard.k) * 7_777_777 + step
    shard.batch.manual_seed(s + 1)
    shard.loss.manual_seed(s + 2)
    if swap:
        shard.torch_state, shard.cuda_state = global_states(s, device)
    else:
        torch.manual_seed(s)


def stored_shards(rng: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Shard RNG states of a checkpoint by ``k`` (format 1: shard 0 only)."""
    if "shards" in rng:
        return {int(st["k"]): st for st in rng["shards"]}
    return {0: {"batch": rng["batch"], "loss": rng["loss"], "torch": rng["torch"], "cuda_all": rng.get("cuda")}}


def all_gather(obj: Any, num_processes: int) -> list[Any]:
    if num_processes == 1:
        return [obj]
    out: list[Any] = [None] * num_processes
    torch.distributed.all_gather_object(out, obj)
    return out


def in_distributed_run() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return True
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    except ValueError:
        return False
