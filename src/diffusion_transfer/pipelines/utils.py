"""Small helpers shared by the pipeline modules."""

from __future__ import annotations

from functools import partial, update_wrapper
from typing import Any, Callable

import torch

from diffusion_transfer.core.cpu_precision import bf16_refusal
from diffusion_transfer.project.schema import InvalidParametersError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def bind(func: Callable, **constants: Any) -> Callable:
    """``func`` with keyword constants fixed, keeping its name for Kedro and
    kedro-viz (a lambda would show up as ``<lambda>``)."""
    bound = partial(func, **constants)
    update_wrapper(bound, func)
    return bound


def inference_setup(precision: str = "no", key: str = "sampling.precision") -> tuple[torch.device, torch.dtype | None]:
    """Where sampling, translation and evaluation run: the GPU when there is
    one, in the configured reduced precision (``bf16``/``fp16`` autocast). On
    the CPU: ``bf16`` autocast where the CPU does bf16 natively (AVX-512 BF16
    or AMX, issue 35), refused naming ``key`` (the YAML key) where it does not
    (emulated bf16 is slower than float32); ``fp16`` and ``no`` run float32
    (CPU fp16 autocast is emulated everywhere)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), _DTYPES.get(precision)
    if precision == "bf16":
        problem = bf16_refusal(key)
        if problem is not None:
            raise InvalidParametersError(problem)
        return torch.device("cpu"), torch.bfloat16
    return torch.device("cpu"), None
