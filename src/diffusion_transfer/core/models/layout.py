"""Keeping a diffusers UNet's activations channels-last on the CPU.

Two of diffusers' layers make a tensor contiguous (NCHW) for the sake of a
GPU: ``Upsample2D`` whenever the batch has 64 images or more (a CUDA kernel's
limit, diffusers issue #984), and ``ResnetBlock2D`` before its 1x1 shortcut
convolution in training mode (a DDP gradient-stride warning, diffusers issue
#12975). On a CPU with channels-last weights each costs two layout
conversions, to NCHW and back to channels-last in the convolution after it:
skipping them made a DDIM UNet call of the FaceWorld model at batch 128
1.12x faster and its training steps 1.03-1.08x (issue 35, docs/BENCHMARK.md
"diffusers' conversions to NCHW, skipped"). Nearest upsampling only
copies values, and each convolution receives the same channels-last tensor
either way, so skipping the conversions changes no bit of the outputs or the
gradients.

``LayoutKeepingResnetBlock2D`` also leaves out the block's last operation,
the division by ``output_scale_factor``, when that factor is 1 (every
FaceWorld and ADM block): x / 1 is x bit for bit in IEEE arithmetic, in the
forward and in the gradient, and the division is a full pass over the block's
output and its gradient: 1-2% of a FaceWorld training step or UNet call,
at the edge of what interleaved medians resolve (issue 35; docs/BENCHMARK.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D

__all__ = ["LAYOUT_KEEPING", "LayoutKeepingResnetBlock2D", "LayoutKeepingUpsample2D", "keep_channels_last"]


def _channels_last_on_cpu(x: torch.Tensor, conv: torch.nn.Module | None) -> bool:
    return (x.device.type == "cpu" and isinstance(conv, torch.nn.Conv2d)
            and conv.weight.is_contiguous(memory_format=torch.channels_last))


class LayoutKeepingUpsample2D(Upsample2D):
    """``Upsample2D`` that interpolates in the input's own layout when its convolution's weights are
    channels-last on the CPU; every other case runs diffusers' own forward."""

    def forward(self, hidden_states: torch.Tensor, output_size: int | None = None, *args, **kwargs) -> torch.Tensor:
        conv = (self.conv if self.name == "conv" else self.Conv2d_0) if self.use_conv else None
        if (args or kwargs or not _channels_last_on_cpu(hidden_states, conv) or self.norm is not None
                or self.use_conv_transpose or not self.interpolate):
            return super().forward(hidden_states, output_size, *args, **kwargs)
        if output_size is None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
        return conv(hidden_states)


class LayoutKeepingResnetBlock2D(ResnetBlock2D):
    """``ResnetBlock2D`` whose shortcut convolution takes its input as it comes when its weights are
    channels-last on the CPU, and which skips the division by an ``output_scale_factor`` of 1. Blocks
    that resample (``up`` / ``down``) or get diffusers' deprecated extra arguments run diffusers' own
    forward (training mode flipped off around it for the shortcut: diffusers reads ``self.training``
    only there, its dropout being a child module with its own flag)."""

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or self.upsample is not None or self.downsample is not None:
            return self.forward_as_diffusers(input_tensor, temb, *args, **kwargs)
        # diffusers' ResnetBlock2D.forward (0.42) for a block that does not resample, less the division by 1
        hidden_states = self.nonlinearity(self.norm1(input_tensor))
        hidden_states = self.conv1(hidden_states)
        if self.time_emb_proj is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
        if self.time_embedding_norm == "default":
            if temb is not None:
                hidden_states = hidden_states + temb
            hidden_states = self.norm2(hidden_states)
        elif self.time_embedding_norm == "scale_shift":
            if temb is None:
                raise ValueError(
                    f" `temb` should not be None when `time_embedding_norm` is {self.time_embedding_norm}")
            time_scale, time_shift = torch.chunk(temb, 2, dim=1)
            hidden_states = self.norm2(hidden_states)
            hidden_states = hidden_states * (1 + time_scale) + time_shift
        else:
            hidden_states = self.norm2(hidden_states)
        hidden_states = self.dropout(self.nonlinearity(hidden_states))
        hidden_states = self.conv2(hidden_states)
        if self.conv_shortcut is not None:
            if self.training and not _channels_last_on_cpu(input_tensor, self.conv_shortcut):
                input_tensor = input_tensor.contiguous()  # diffusers' conversion, kept where it is not skipped
            input_tensor = self.conv_shortcut(input_tensor)
        output_tensor = input_tensor + hidden_states
        if self.output_scale_factor != 1:  # x / 1 == x: a full pass saved, forward and backward
            output_tensor = output_tensor / self.output_scale_factor
        return output_tensor

    def forward_as_diffusers(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """diffusers' own forward, the shortcut's input kept channels-last (the division by 1 included)."""
        if not self.training or not _channels_last_on_cpu(input_tensor, self.conv_shortcut):
            return super().forward(input_tensor, temb, *args, **kwargs)
        self.training = False
        try:
            return super().forward(input_tensor, temb, *args, **kwargs)
        finally:
            self.training = True


#: diffusers class -> its layout-keeping subclass
LAYOUT_KEEPING = {Upsample2D: LayoutKeepingUpsample2D, ResnetBlock2D: LayoutKeepingResnetBlock2D}


def keep_channels_last(model: torch.nn.Module) -> int:
    """Give each ``Upsample2D`` and ``ResnetBlock2D`` of ``model`` its layout-keeping class, in place (the
    class only: weights, config and state dict are unchanged, and copies keep it); returns how many changed."""
    changed = 0
    for module in model.modules():
        keeping = LAYOUT_KEEPING.get(type(module))
        if keeping is not None:
            module.__class__ = keeping
            changed += 1
    return changed
