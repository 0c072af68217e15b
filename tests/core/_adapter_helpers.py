"""Shared by the adapter tests (tests/core/test_adapters.py and its
neighbours): the noise schedule, a tiny UNet with attention at two widths,
inputs for it and a perturbation that opens zero-initialised modules."""

from __future__ import annotations

import torch

from diffusion_transfer.core.models import build_unet
from diffusion_transfer.core.schedule import make_schedule

SCHED = make_schedule()
# Attention at two widths (8 and 16) so that sharing per width is visible.
TINY = dict(
    sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
    attention_head_dim=4, norm_num_groups=4,
)


def tiny_unet(out_channels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return build_unet({**TINY, "out_channels": out_channels}).eval()


def inputs(b: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 8, 8, generator=g), torch.randint(0, 1000, (b,), generator=g)


def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
