"""The world source model's initial weights come from ``world.source.seed``
alone, not from whatever drew from torch's global random stream before."""

import torch

from diffusion_transfer.core.world.source import train_source_model

_TINY_UNET = {"block_out_channels": [8, 8, 8], "norm_num_groups": 4, "attention_head_dim": 8}
_ONE_STEP = {"steps": 1, "batch_size": 2, "lr": 1e-4, "ema_decay": 0.0, "checkpoint_every": 1, "log_every": 1}


def _weights(seed: int, global_seed: int) -> torch.Tensor:
    torch.manual_seed(global_seed)
    torch.randn(17)  # an earlier node drawing from the global stream
    model = train_source_model(_TINY_UNET, _ONE_STEP, n_images=2, seed=seed, progress=False)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_source_model_weights_depend_on_its_seed_only():
    seed_0 = _weights(seed=0, global_seed=1)
    assert torch.equal(seed_0, _weights(seed=0, global_seed=2))
    assert not torch.equal(seed_0, _weights(seed=1, global_seed=1))
