"""Optional linear learning-rate warm-up, as diffusers'
``get_constant_schedule_with_warmup``: the ``k``-th optimiser step (counted
from 1) runs at ``lr * min(1, (k - 1) / warmup_steps)``, so the lr rises
linearly from 0 over ``warmup_steps`` steps and is ``lr`` from step
``warmup_steps + 1`` on (``warmup_steps = 0``: constant ``lr``).

The loop sets the lr of every parameter group from the global step before
each optimiser step, instead of keeping a ``LambdaLR``: there is no scheduler
state to save, so a resumed run (any number of processes or accumulation
micro-steps) continues the same sequence by construction.

Torch only; no Kedro.
"""

from __future__ import annotations

import torch

__all__ = ["lr_at", "set_lr_"]


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """The lr of the ``step``-th optimiser step (counted from 1)."""
    if warmup_steps > 0 and step - 1 < warmup_steps:
        return lr * max(0, step - 1) / warmup_steps
    return lr


def set_lr_(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
