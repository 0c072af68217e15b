"""glibc malloc tuning at start-up (core/allocator.py): skippable, and
without effect on results: bit-identical outputs with and without it (batch
sizes are left as configured). When it is applied (a run's start, not the
package import): tests/test_startup.py."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffusion_transfer.core import allocator

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt is glibc's")

# DDIM-10 samples of a tiny random UNet at batch 8 and at batch 2, saved to argv[1].
CHILD = """
import sys, numpy as np, torch
from diffusion_transfer.core import allocator
from diffusion_transfer.core.models import build_unet
from diffusion_transfer.core.sampling import make_noise_bank, model_eps_fn, sample_ddim
from diffusion_transfer.core.schedule import make_schedule
allocator.tune_malloc_at_startup()  # as a run's start does; DT_MALLOC_TUNING picks the arm
torch.set_num_threads(1)
torch.manual_seed(0)
unet = build_unet(dict(sample_size=16, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
                       norm_num_groups=4)).eval()
sched = make_schedule()
eps_fn = model_eps_fn(unet, sched)
noise = make_noise_bank(8, (3, 16, 16), seed=5)
with torch.no_grad():
    out = {str(b): torch.cat([sample_ddim(eps_fn, noise[i:i + b], sched, steps=10) for i in range(0, 8, b)]).numpy()
           for b in (8, 2)}
np.savez(sys.argv[1], tuned=np.array(allocator.applied_settings() is not None), **out)
"""


def _sample(tmp_path: Path, tuned: bool) -> dict[str, np.ndarray]:
    out = tmp_path / f"samples_{int(tuned)}.npz"
    env = {k: v for k, v in os.environ.items() if k not in allocator._USER_KNOBS}
    env[allocator.ENV_VAR] = "1" if tuned else "0"
    subprocess.run([sys.executable, "-c", CHILD, str(out)], env=env, check=True, timeout=600)
    return dict(np.load(out))


@glibc
def test_tune_malloc_records_what_it_applied():
    assert allocator.tune_malloc() == {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 2**31 - 1}
    assert allocator.applied_settings() == {name: value for name, (_, value) in allocator.MALLOC_SETTINGS.items()}


def test_startup_respects_the_switch_and_the_users_knobs(monkeypatch):
    monkeypatch.setenv(allocator.ENV_VAR, "0")
    assert allocator.tune_malloc_at_startup() is None
    monkeypatch.setenv(allocator.ENV_VAR, "1")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")  # the user's own glibc setting wins
    assert allocator.tune_malloc_at_startup() is None


@glibc
def test_results_bit_identical_with_and_without_the_tuning(tmp_path):
    plain, tuned = _sample(tmp_path, tuned=False), _sample(tmp_path, tuned=True)
    assert not plain["tuned"] and tuned["tuned"]
    for batch in ("8", "2"):  # two allocation patterns
        assert np.array_equal(plain[batch], tuned[batch])
    assert tuned["8"].std() > 0.1  # real samples, not a constant
