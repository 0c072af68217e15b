"""train() inside a run started by torchrun (the multi-machine path of
docs/DISTRIBUTED.md, here two CPU processes with gloo on one machine): the
same run as one process accumulating the same two shards."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion_transfer.core.methods import DenoisingLoss
from diffusion_transfer.core.training import train
from tests.core.test_distributed import SCHED, cfg, data, unet

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("torchrun_train.py")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def test_torchrun_two_processes_equal_one_process_accumulating(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ddp = torch.load(tmp_path / "result.pt", weights_only=True)
    assert ddp["world_size"] == 2
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("step_*.pt"))] == [
        "step_0000002.pt", "step_0000003.pt"]  # written once, by rank 0

    accum = train(unet(), DenoisingLoss(SCHED), data(), cfg(gradient_accumulation_steps=2), progress=False)
    for name, ours in (("model", accum.model), ("ema", accum.ema_model)):
        theirs = ddp[name]
        for key, value in ours.state_dict().items():
            torch.testing.assert_close(theirs[key], value, rtol=1e-5, atol=1e-6, msg=f"{name}.{key}")
    assert [r["step"] for r in ddp["history"]] == [r["step"] for r in accum.history] == [1, 2, 3]
    for r, s in zip(ddp["history"], accum.history):
        for key in ("loss", "diffusion", "grad_norm"):
            assert r[key] == pytest.approx(s[key], rel=1e-5, abs=1e-7), (r["step"], key)
