"""glibc's malloc is tuned when a run starts (project/startup.py's hook), not
when the package is imported. Each check runs in a fresh process, since malloc
settings are process-wide and this test process has its own (conftest.py)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_transfer.core import allocator

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

# Prints what the allocator module recorded and whether glibc serves a 64 MiB
# block with its own mmap (its default; not once M_MMAP_MAX is 0), after the
# child's set-up, which stands in for "{setup}".
PROBE = """
import ctypes, json
{setup}
from diffusion_transfer.core import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
before = libc.mallinfo2().hblkhd  # bytes in mmapped blocks
block = libc.malloc(64 << 20)
mmapped = libc.mallinfo2().hblkhd - before >= 64 << 20
libc.free(ctypes.c_void_p(block))
print(json.dumps({{"applied": allocator.applied_settings(), "mmapped": mmapped}}))
"""


def _probe(setup: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in allocator._USER_KNOBS}
    env[allocator.ENV_VAR] = "1"
    done = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_package_leaves_malloc_alone():
    seen = _probe("import diffusion_transfer, diffusion_transfer.settings, diffusion_transfer.pipeline_registry")
    assert seen == {"applied": None, "mmapped": True}


def test_a_kedro_session_tunes_malloc_when_its_context_is_created():
    seen = _probe("from kedro.framework.session import KedroSession\n"
                  "from kedro.framework.startup import bootstrap_project\n"
                  f"bootstrap_project({str(ROOT)!r})\n"
                  f"KedroSession.create(project_path={str(ROOT)!r}).load_context()")
    assert seen == {"applied": {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 2**31 - 1}, "mmapped": False}


def test_the_tuning_hook_is_registered_first():
    from diffusion_transfer.project.startup import MallocTuningHook
    from diffusion_transfer.settings import HOOKS

    assert isinstance(HOOKS[0], MallocTuningHook)
