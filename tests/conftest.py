"""Test-wide settings: never touch the network, never send telemetry."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# No mlflow tracking in tests unless a test turns it on with its own store (tests/test_tracking.py).
os.environ.setdefault("DT_TRACKING", "off")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Under pytest-xdist (`make test` runs one worker per core) each worker, and every run it spawns, keeps
# to one thread: two workers of two threads each on two cores thrash.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402

# Two cores on CI: keep intra-op threads modest so parallel pieces do not thrash.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

from diffusion_transfer.core.allocator import tune_malloc_at_startup  # noqa: E402

# The malloc settings a run applies at its start (project/startup.py), for the tests' large CPU tensors too.
tune_malloc_at_startup()

import pytest  # noqa: E402


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is much faster than two on a shared CPU
    (test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
