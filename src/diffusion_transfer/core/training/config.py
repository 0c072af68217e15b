"""Training settings, the result of a run, and the non-finite-loss error."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    lr: float = Field(1e-4, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
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
    #: torch.compile (inductor) of the trained model's forward and backward
    #: (issue 35); the same numbers within float rounding, compiled once per run
    compile: bool = Field(False, description="torch.compile the trained model (inductor)")
    #: the trained model (and the teacher) in channels-last memory layout while
    #: training, where oneDNN's and cuDNN's convolutions are faster (issue 35);
    #: the same numbers within float rounding, the model handed back contiguous
    channels_last: bool = Field(False, description="train with 4-D weights in channels-last layout")
    #: AdamW's fused kernel (``torch.optim.AdamW(fused=True)``: one kernel for
    #: every parameter, on CUDA and CPU) in place of its per-tensor loop (issue 35)
    fused_optimizer: bool = Field(False, description="AdamW's fused kernel")
    #: TF32 for the float32 matrix products and convolutions left outside
    #: autocast, on CUDA (Ampere and later) only; restored when training ends
    tf32: bool = Field(False, description="TF32 float32 matmuls and convolutions on CUDA")
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
