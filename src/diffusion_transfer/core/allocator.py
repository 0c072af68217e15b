"""glibc malloc settings for large CPU tensors, applied once at start-up.

By default glibc serves every allocation above its mmap threshold (at most
32 MiB) with a fresh ``mmap`` and unmaps it on ``free``; freed memory at the
top of the heap is trimmed back to the system. A CPU UNet at batch 128, or
Inception at batch 64, allocates and frees activations of tens to hundreds of
MiB at every layer, so each one is faulted in page by page again. Serving
large blocks from the heap (``M_MMAP_MAX = 0``) and not trimming it
(``M_TRIM_THRESHOLD`` at its maximum, 2 GiB) lets freed blocks be reused in
place. Measured with ``nice -n 10 python benchmarks/bench_inference.py
--n-samples 128 --steps 20 --n-images 128`` on 2 cores shared with other jobs
(load average 5-10, so wall times are loose; CPU seconds and faults less so),
outputs bit-identical:

    DDIM-20, 128 samples, batch 128:  glibc 190.5 s wall, 13.2 s system, 4.35M minor faults, 1070 MB peak RSS
                                      tuned 112.6 s wall,  1.4 s system, 0.26M minor faults, 1174 MB
    Inception, 128 images, batch 64:  glibc  91.7 s wall, 12.9 s system, 4.09M minor faults, 1804 MB
                                      tuned  72.0 s wall,  7.3 s system, 0.67M minor faults, 2918 MB

The price is memory: the process keeps what it has needed at its peak until
it exits, and a heap does not coalesce as well as fresh mappings (Inception at
batch 64: +1.1 GB peak RSS).

Applied when a run starts, not on import: by a Kedro hook for every session
(``kedro run``, ``python -m diffusion_transfer``, study points;
``project/startup.py``), and by each training worker process
(``core/training/launch.py``), the benchmarks that compute outside a session
and the test suite, each at its start. Skipped when
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
