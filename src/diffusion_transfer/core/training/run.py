"""The fixed parts of one ``train()`` call (its Setup section): settings and
inputs checked, the accelerator and this process's place in the run, its
shards, the trainable parameters and the EMA copy."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from diffusion_transfer.core.models.layout import keep_channels_last

from .checkpoint import identity_record
from .config import TrainConfig
from .rng import Shard, make_shards


@dataclass
class Run:
    """The fixed parts of one ``train()`` call in one process: settings, the
    accelerator and this process's place in the run, its shards, and (after
    the model setup) the unwrapped model, its EMA and the optimiser."""

    config: TrainConfig
    accelerator: Any
    device: torch.device
    rank: int
    n_proc: int
    is_main: bool
    shards: list[Shard]
    swap: bool  # several shards per process: their global RNG states are swapped in per micro-step
    ckpt_dir: Path | None
    identity: dict[str, Any] | None = None  # the run a checkpoint must record to be resumed (checkpoint.py)
    params: list[torch.nn.Parameter] = field(default_factory=list)  # the trained ones
    raw_model: torch.nn.Module | None = None
    ema: torch.nn.Module | None = None
    ema_pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (EMA, live) trained
    optimizer: Any = None
    teacher: torch.nn.Module | None = None  # set when its layout is changed for the run (channels_last)
    saved_tf32: tuple[str, bool] | None = None  # the float32 precision settings ``tf32`` replaced

    @property
    def n_shards(self) -> int:
        return self.n_proc * self.config.gradient_accumulation_steps

    @classmethod
    def start(cls, config: TrainConfig, checkpoint_dir: str | os.PathLike[str] | None,
              run_identity: dict[str, Any] | None = None) -> Run:
        accelerator = make_accelerator(config)
        rank, n_proc = accelerator.process_index, accelerator.num_processes
        if config.num_processes not in (1, n_proc):
            raise ValueError(
                f"num_processes={config.num_processes} but this distributed run has {n_proc} processes; "
                f"set num_processes to {n_proc} (or 1 to take the launcher's), or run without the launcher"
            )
        accum = config.gradient_accumulation_steps
        swap = accum > 1
        shards = make_shards(config.seed, [rank * accum + m for m in range(accum)], accelerator.device, swap)
        return cls(config, accelerator, accelerator.device, rank, n_proc, accelerator.is_main_process, shards, swap,
                   Path(checkpoint_dir) if checkpoint_dir is not None else None, identity_record(run_identity))

    def prepare(self, model: torch.nn.Module, trainable_parameters: Iterable[torch.nn.Parameter] | None,
                teacher: torch.nn.Module | None) -> tuple[torch.nn.Module, Any]:
        """Move ``model`` to the device in train mode, copy its EMA, freeze the
        teacher, and return the model and its AdamW optimiser as accelerate
        prepared them (DDP-wrapped in a multi-process run)."""
        config = self.config
        model.to(self.device)
        model.train()
        self.params = trainable_parameters_of(model, trainable_parameters)
        self.ema, self.ema_pairs = make_ema(model, self.params, config.ema_decay)  # before compile: an eager EMA
        if teacher is not None:
            teacher.to(self.device).eval().requires_grad_(False)
        if config.channels_last:  # after the EMA copy, which stays contiguous; undone by hand_back
            self.teacher = teacher
            for net in (model, teacher):
                if net is not None:
                    net.to(memory_format=torch.channels_last)
                    if not config.compile:  # compile traces the model's own layers: no flag flipped mid-forward
                        keep_channels_last(net)  # diffusers' NCHW conversions skipped, the same bits
        if config.compile:  # in place, so state_dict keys, checkpoints and isinstance stay as they are
            model.compile()
        if config.tf32:
            self.saved_tf32 = enable_tf32(self.device)
        optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, betas=config.betas, eps=config.adam_eps, weight_decay=config.weight_decay,
            fused=True if config.fused_optimizer else None,
        )
        model, optimizer = self.accelerator.prepare(model, optimizer)
        self.optimizer, self.raw_model = optimizer, self.accelerator.unwrap_model(model)
        return model, optimizer


def hand_back(run: Run, model: torch.nn.Module) -> None:
    """Undo ``model.compile()`` (:func:`uncompile`) and the channels-last layout
    of the trained model and the teacher: later nodes save them with
    safetensors, which takes contiguous tensors only."""
    uncompile(model)
    restore_tf32(run.saved_tf32)
    run.saved_tf32 = None
    if run.config.channels_last:
        for net in (model, run.teacher):
            if net is not None:
                net.to(memory_format=torch.contiguous_format)


def enable_tf32(device: torch.device) -> tuple[str, bool] | None:
    """TF32 for float32 matrix products (``set_float32_matmul_precision("high")``)
    and cuDNN convolutions on a CUDA device; returns the settings it replaced
    (None elsewhere: a CPU's float32 stays float32)."""
    if device.type != "cuda":
        return None
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return saved


def restore_tf32(saved: tuple[str, bool] | None) -> None:
    """Put back what :func:`enable_tf32` replaced (nothing for None)."""
    if saved is not None:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def uncompile(model: torch.nn.Module) -> None:
    """Undo ``model.compile()`` (``config.compile``): the trained model goes on
    to sampling at other shapes, eagerly, as an uncompiled run's would."""
    model.__dict__.pop("_compiled_call_impl", None)  # what Module.compile sets; the class default is None


def as_config(config: TrainConfig | dict[str, Any]) -> TrainConfig:
    if isinstance(config, dict):
        config = TrainConfig(**config)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or dict, got {type(config).__name__}")
    return config


def check_inputs(images: torch.Tensor, conditions: torch.Tensor | None, latents: bool = False) -> None:
    """Images (N, 3, H, W) in [-1, 1]; with ``latents`` (a latent model's
    training set: its autoencoder's scaled latents, of unit variance when the
    scaling factor is 1/std) (N, C, H, W) of any finite value."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a float tensor (N, 3, H, W) in [-1, 1], got {type(images).__name__}")
    if images.ndim != 4 or (images.shape[1] != 3 and not latents):
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: nothing to train on")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [-1, 1], got dtype {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if latents and not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"latents must be finite, got values in [{lo:.4g}, {hi:.4g}]")
    if not latents and (not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1.001 or hi > 1.001):
        raise ValueError(f"images must lie in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]")
    if conditions is not None and (not isinstance(conditions, torch.Tensor) or conditions.shape[0] != images.shape[0]):
        got = tuple(conditions.shape) if isinstance(conditions, torch.Tensor) else type(conditions).__name__
        raise ValueError(f"conditions must be a tensor with one row per image ({images.shape[0]}), got {got}")


def make_accelerator(config: TrainConfig):
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


def trainable_parameters_of(model: torch.nn.Module, chosen: Iterable[torch.nn.Parameter] | None) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad] if chosen is None else list(chosen)
    if not params:
        raise ValueError("no trainable parameters: every parameter of the model is frozen")
    model_param_ids = {id(p) for p in model.parameters()}
    if any(id(p) not in model_param_ids for p in params):
        raise ValueError("trainable_parameters must be parameters of model")
    return params


def make_ema(model: torch.nn.Module, params: list[torch.nn.Parameter], decay: float
              ) -> tuple[torch.nn.Module | None, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A frozen copy of ``model`` and its (EMA, live) pairs of trained parameters; (None, []) for decay 0.

    The copy shares the frozen parameters (``requires_grad`` False, not
    trained) with ``model`` instead of copying them: their average is
    themselves. A LoRA run's EMA then holds the adapters, not a second base
    UNet; a full fine-tuning run has none to share and copies everything."""
    if decay <= 0:
        return None, []
    trainable = {id(p) for p in params}
    frozen = {id(p): p for p in model.parameters() if not p.requires_grad and id(p) not in trainable}
    ema = copy.deepcopy(model, memo=frozen).eval().requires_grad_(False)
    return ema, [(pe, pm) for pe, pm in zip(ema.parameters(), model.parameters()) if id(pm) in trainable]
