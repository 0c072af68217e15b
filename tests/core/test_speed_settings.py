"""``train.fused_optimizer`` and ``train.tf32`` (issue 35's GPU settings):
the fused AdamW trains the per-tensor AdamW's weights within rounding, and
TF32 is switched on for a CUDA run only and put back when training ends.
Speed is the benchmarks' business (benchmarks/bench_gpu_mfu.py)."""

from __future__ import annotations

import pytest
import torch

from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.training import TrainConfig, train
from diffusion_transfer.core.training.run import enable_tf32, restore_tf32
from diffusion_transfer.project.schema import TrainParams
from tests.core._adapter_helpers import SCHED, tiny_unet


def test_the_fused_adamw_trains_the_per_tensor_adamw_weights_within_rounding():
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    loss = build_method("naive", {}, SCHED).loss_fn
    start = torch.cat([p.detach().flatten() for p in tiny_unet().parameters()])
    weights = {}
    for fused in (False, True):
        config = TrainConfig(steps=3, batch_size=2, lr=1e-3, ema_decay=0.0, fused_optimizer=fused)
        result = train(tiny_unet(), loss, images, config, progress=False)
        weights[fused] = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    change = (weights[False] - start).norm()
    assert change > 0
    # one kernel reorders the same float32 arithmetic; Adam turns a gradient that is only rounding noise
    # into a full lr step, so single weights may differ by up to lr: relative to the weights' change (as
    # test_compile_cpu's training tolerance; measured 2.3e-4 here)
    assert (weights[True] - weights[False]).norm() / change < 1e-2


def test_tf32_is_for_cuda_only_and_is_put_back():
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    assert enable_tf32(torch.device("cpu")) is None  # a CPU's float32 stays float32
    assert torch.get_float32_matmul_precision() == before[0]
    torch.backends.cudnn.allow_tf32 = False
    try:
        saved = enable_tf32(torch.device("cuda"))  # flags only: no CUDA device needed to set them
        assert saved == (before[0], False)
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
        restore_tf32(saved)
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == (before[0], False)
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


@pytest.mark.parametrize("key", ["fused_optimizer", "tf32"])
def test_the_settings_enter_a_runs_keys_only_when_on(key):
    # off (the default) they are left out, so the checkpoints of runs without them resume as they were
    assert key not in TrainParams(steps=10).run_config()
    assert TrainParams(steps=10, **{key: True}).run_config()[key] is True
