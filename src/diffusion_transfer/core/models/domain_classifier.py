"""A noisy, time-conditioned domain classifier p(domain | x_t, t).

Used by TAN (similarity guidance: grad_x log p(target | x_t, t)) and EGSDE
(realism energy from its features). The network is the encoder half of a
diffusers UNet -- ``conv_in``, sinusoidal time embedding, ``DownBlock2D`` /
``AttnDownBlock2D`` blocks built with diffusers' ``get_down_block`` -- then
attention pooling (a learned query attends over the final feature map, as in
guided-diffusion's ``AttentionPool2d``) and a linear head. It is trained on
``q_sample``'d images at uniform t (its loss and held-out accuracy are in
:mod:`diffusion_transfer.core.training.domain_classifier`).

API: ``model(x_t, t) -> logits``; :meth:`log_prob`; :meth:`grad_log_prob`
(d log p(y | x_t, t) / d x_t, without touching parameter gradients);
:meth:`features` (one feature map per block, for EGSDE).

Saved as ``classifier.safetensors`` + ``classifier.json`` (its config), atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..io import atomic_dir, require_weights_folder

__all__ = [
    "DomainClassifier",
    "load_domain_classifier",
    "save_domain_classifier",
]

WEIGHTS_FILE = "classifier.safetensors"
META_FILE = "classifier.json"


class AttentionPool(nn.Module):
    """One learned query attends over the H*W positions (plus their mean)."""

    def __init__(self, channels: int, heads: int, size: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(size * size + 1, channels) / channels**0.5)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm = nn.LayerNorm(channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        tokens = h.flatten(2).transpose(1, 2)  # (B, N, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + self.pos[: tokens.shape[1] + 1]
        tokens = self.norm(tokens)
        out, _ = self.attn(tokens[:, :1], tokens, tokens, need_weights=False)
        return out[:, 0]


class DomainClassifier(nn.Module):
    """p(y | x_t, t) for ``num_classes`` domains (index 0 = source, 1 = target)."""

    def __init__(
        self,
        sample_size: int = 32,
        block_out_channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        attention_blocks: Sequence[bool] | None = None,
        num_classes: int = 2,
        pool_heads: int = 4,
        norm_num_groups: int = 8,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_2d_blocks import get_down_block

        channels = [int(c) for c in block_out_channels]
        if not channels or any(c < 1 or c % norm_num_groups for c in channels):
            raise ValueError(f"block_out_channels {channels} must be positive multiples of norm_num_groups "
                             f"({norm_num_groups})")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        attention_blocks = list(attention_blocks) if attention_blocks is not None else [False] * (len(channels) - 1) + [True]
        if len(attention_blocks) != len(channels):
            raise ValueError("attention_blocks needs one flag per entry of block_out_channels")
        if sample_size % 2 ** (len(channels) - 1):
            raise ValueError(f"sample_size {sample_size} must be divisible by 2^{len(channels) - 1}")
        self.config = {
            "sample_size": int(sample_size), "block_out_channels": channels, "layers_per_block": int(layers_per_block),
            "attention_blocks": [bool(a) for a in attention_blocks], "num_classes": int(num_classes),
            "pool_heads": int(pool_heads), "norm_num_groups": int(norm_num_groups),
        }
        if in_channels != 3:  # a latent model's classifier reads its latents
            self.config["in_channels"] = int(in_channels)
        temb = 4 * channels[0]
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels[0], temb)
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        blocks, cin = [], channels[0]
        for i, (cout, attn) in enumerate(zip(channels, attention_blocks)):
            last = i == len(channels) - 1
            blocks.append(get_down_block(
                "AttnDownBlock2D" if attn else "DownBlock2D", num_layers=layers_per_block, in_channels=cin,
                out_channels=cout, temb_channels=temb, add_downsample=not last, resnet_eps=1e-5,
                resnet_act_fn="silu", resnet_groups=norm_num_groups, attention_head_dim=max(8, cout // 4),
                downsample_padding=1,
            ))
            cin = cout
        self.down_blocks = nn.ModuleList(blocks)
        final = sample_size // 2 ** (len(channels) - 1)
        self.out_norm = nn.GroupNorm(norm_num_groups, channels[-1])
        self.pool = AttentionPool(channels[-1], pool_heads, final)
        self.head = nn.Linear(channels[-1], num_classes)

    def _embed_time(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.time_embedding(self.time_proj(t).to(x.dtype))

    def features(self, x_t: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """The feature map after each down block (EGSDE's realism features)."""
        emb = self._embed_time(t, x_t)
        h = self.conv_in(x_t)
        feats = []
        for block in self.down_blocks:
            h, _ = block(h, emb)
            feats.append(h)
        return feats

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.features(x_t, t)[-1]
        return self.head(self.pool(F.silu(self.out_norm(h))))

    def log_prob(self, x_t: torch.Tensor, t: torch.Tensor, y: int | torch.Tensor) -> torch.Tensor:
        """log p(y | x_t, t), shape (B,)."""
        logp = torch.log_softmax(self(x_t, t).float(), dim=-1)
        y = torch.as_tensor(y, device=x_t.device).long()
        y = y.expand(x_t.shape[0]) if y.ndim == 0 else y
        return logp.gather(1, y[:, None])[:, 0]

    def grad_log_prob(self, x_t: torch.Tensor, t: torch.Tensor, y: int | torch.Tensor) -> torch.Tensor:
        """grad_{x_t} log p(y | x_t, t), shaped like ``x_t``; parameters get no
        gradient (``torch.autograd.grad`` w.r.t. the input only)."""
        with torch.enable_grad():
            x = x_t.detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(x, t, y).sum(), x)
        return grad.to(x_t.dtype)


def save_domain_classifier(model: DomainClassifier, folder: str | Path, metrics: dict | None = None) -> Path:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / META_FILE).write_text(json.dumps({"format": 1, "config": model.config, "metrics": metrics or {}},
                                                indent=2, sort_keys=True))
    return Path(folder)


def load_domain_classifier(folder: str | Path) -> DomainClassifier:
    from safetensors.torch import load_file

    weights, meta_path = require_weights_folder(
        folder, WEIGHTS_FILE, META_FILE, "domain classifier",
        "Train it with the classifier_<dataset> pipeline (kedro run --pipeline=classifier_<dataset>).")
    meta = json.loads(Path(meta_path).read_text())
    model = DomainClassifier(**meta["config"])
    model.load_state_dict(load_file(str(weights)))
    return model.eval()
