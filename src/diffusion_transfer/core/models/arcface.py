"""The ArcFace IR-SE face-identity network (Deng et al., 2019), in the layout
of TreB1eN/InsightFace_Pytorch's ``model_ir_se50.pth``, the file pSp, e4e and
Asyrp load for their identity loss and ID metric.

The module names reproduce that checkpoint's keys exactly (``input_layer.*``,
``body.N.shortcut_layer.*``, ``body.N.res_layer.K.*``, ``output_layer.*``), so
the released file loads with ``strict=True``. Input: 112x112 RGB in [-1, 1];
output: a unit-norm 512-d embedding.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

#: units per stage (in_channels, out_channels, units), as in the IR-SE paper family
_STAGES = {
    50: ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)),
    100: ((64, 64, 3), (64, 128, 13), (128, 256, 30), (256, 512, 3)),
    152: ((64, 64, 3), (64, 128, 8), (128, 256, 36), (256, 512, 3)),
}


class ArcFaceLoadError(ValueError):
    """The file is not an IR-SE checkpoint of the expected depth."""


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(w))))


class _BottleneckIRSE(nn.Module):
    """BN-conv-PReLU-conv-BN-SE residual unit; the stride sits on the second conv."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if in_ch == out_ch:
            # a 1x1 max-pool with stride is plain subsampling (no parameters)
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                                nn.BatchNorm2d(out_ch))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
            nn.PReLU(out_ch),
            nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            _SqueezeExcite(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class ArcFaceIRSE(nn.Module):
    """IR-SE backbone for 112x112 faces: ``forward(x) -> (B, 512)`` unit vectors."""

    input_size = 112

    def __init__(self, num_layers: int = 50) -> None:
        super().__init__()
        if num_layers not in _STAGES:
            raise ValueError(f"num_layers must be one of {sorted(_STAGES)}, got {num_layers}")
        self.num_layers = num_layers
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for in_ch, out_ch, n in _STAGES[num_layers]:
            units.append(_BottleneckIRSE(in_ch, out_ch, 2))
            units += [_BottleneckIRSE(out_ch, out_ch, 1) for _ in range(n - 1)]
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.6), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"ArcFace expects {self.input_size}x{self.input_size} faces, got {tuple(x.shape)}")
        z = self.output_layer(self.body(self.input_layer(x)))
        return torch.nn.functional.normalize(z, dim=1)


def load_arcface(path: str | os.PathLike, num_layers: int = 50) -> ArcFaceIRSE:
    """The IR-SE network from a ``model_ir_se50.pth``-layout state dict, in
    eval mode with frozen weights. Missing, extra or misshapen keys are named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ArcFace weights not found: {path}")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ArcFaceLoadError(f"{path} does not hold a state dict (got {type(state).__name__})")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model = ArcFaceIRSE(num_layers)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or extra or misshapen:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = [f"{label}: {head(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", extra), ("wrong shape", misshapen)) if keys]
        raise ArcFaceLoadError(f"{path} is not an IR-SE{num_layers} ArcFace checkpoint "
                               f"(model_ir_se50.pth layout); " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
