"""Small helpers shared by the pipeline modules."""

from __future__ import annotations

from functools import partial, update_wrapper
from typing import Any, Callable


def bind(func: Callable, **constants: Any) -> Callable:
    """``func`` with keyword constants fixed, keeping its name for Kedro and
    kedro-viz (a lambda would show up as ``<lambda>``)."""
    bound = partial(func, **constants)
    update_wrapper(bound, func)
    return bound
