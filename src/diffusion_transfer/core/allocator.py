"""glibc malloc settings for large CPU tensors, applied once at start-up.

By default glibc serves every allocation above its mmap threshold (at most
32 MiB) with a fresh ``mmap`` and unmaps it on ``free``; smaller freed memory
at the top of the heap is trimmed back to the system. A CPU UNet at batch 128
allocates and frees activations of tens of MiB at every layer of every step,
so each one is faulted in page by page again: 4.5 million minor page faults
and 13 s of system CPU for 128 DDIM-20 samples of the FaceWorld model
(``benchmarks/bench_inference.py``). Serving large blocks from the heap
(``M_MMAP_MAX = 0``) and never trimming it during the run (``M_TRIM_THRESHOLD``
at its maximum) lets freed blocks be reused in place: 0.26 million faults and
1.3 s of system CPU for the same run, the same numbers. The process keeps the
memory it has needed at its peak until it exits, which it would have needed
again at the next step.

Applied by ``import diffusion_transfer`` (so ``kedro run``, the CLI, the
benchmarks and the tests get it before their large allocations). Skipped when
``DT_MALLOC_TUNING=0``, when the C library is not glibc, or when the user has
set glibc's own knobs (``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``), which then win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["ENV_VAR", "MALLOC_SETTINGS", "applied_settings", "tune_malloc", "tune_malloc_at_startup"]

ENV_VAR = "DT_MALLOC_TUNING"
# <malloc.h> parameter numbers
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
INT_MAX = 2**31 - 1  # mallopt takes an int
#: name -> (mallopt parameter, value)
MALLOC_SETTINGS: dict[str, tuple[int, int]] = {
    "M_MMAP_MAX": (M_MMAP_MAX, 0),  # no block gets its own mmap: large tensors come from the heap and are reused
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, INT_MAX),  # free heap top kept (up to 2 GiB) instead of unmapped
}
_USER_KNOBS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
               "GLIBC_TUNABLES")

_applied: dict[str, int] | None = None


def applied_settings() -> dict[str, int] | None:
    """The malloc settings this process applied, ``None`` if none."""
    return None if _applied is None else dict(_applied)


def tune_malloc(settings: dict[str, tuple[int, int]] = MALLOC_SETTINGS) -> dict[str, int] | None:
    """Apply ``settings`` with glibc's ``mallopt``; returns what was applied,
    or ``None`` when the C library is not glibc or a call is refused."""
    global _applied
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = {}
    for name, (param, value) in settings.items():
        if mallopt(param, value) != 1:  # mallopt returns 1 on success
            return None
        done[name] = value
    _applied = {**(_applied or {}), **done}
    return dict(done)


def tune_malloc_at_startup() -> dict[str, int] | None:
    """:func:`tune_malloc` unless ``DT_MALLOC_TUNING=0`` or the user set glibc's knobs."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if any(knob in os.environ for knob in _USER_KNOBS):
        return None
    return tune_malloc()
