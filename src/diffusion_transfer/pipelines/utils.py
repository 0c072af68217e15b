"""Small helpers shared by the pipeline modules."""

from __future__ import annotations

from functools import partial, update_wrapper
from typing import Any, Callable

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def bind(func: Callable, **constants: Any) -> Callable:
    """``func`` with keyword constants fixed, keeping its name for Kedro and
    kedro-viz (a lambda would show up as ``<lambda>``)."""
    bound = partial(func, **constants)
    update_wrapper(bound, func)
    return bound


def inference_setup(precision: str = "no") -> tuple[torch.device, torch.dtype | None]:
    """Where sampling and translation run: the GPU when there is one, in the
    configured reduced precision (``bf16``/``fp16`` autocast); on the CPU in
    float32 whatever ``precision`` says (CPU autocast is slower, not faster)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), _DTYPES.get(precision)
    return torch.device("cpu"), None
