"""A3FT: Adapter-Augmented Attention Fine-Tuning (Moon et al., "Fine-tuning
Diffusion Models with Limited Data"), and its ablation ``attn``.

* ``attn`` -- every parameter frozen except the UNet's attention blocks (the
  paper's "attention block fine-tuning", ~10.3% of the parameters). On a
  text-to-image UNet it is the Custom Diffusion baseline (Kumari et al.,
  "Multi-Concept Customization of Text-to-Image Diffusion", CVPR 2023)
  instead: only the cross-attention layers train, their key and value
  projections by default (``cross_attention: kv``) or all of them
  (``all``); :data:`CROSS_ATTENTION`.
* ``a3ft`` -- the attention blocks plus a *time-aware adapter* in each
  attention block, placed between the attention and its output projection FF
  (the block's existing ``to_out[0]`` linear layer):

      z_query = LN(FF_fuse(z_in, t_emb))                               (1)
      z_out   = LN(CrossAttn(z_query, z_in, z_in))                     (2)
      h_out   = FF((1 - alpha_t) * z_in + alpha_t * z_out)             (3)

  - time fusion (App. C.4): t_emb -> Linear -> SiLU -> Linear to the feature
    width C, added to z_in, then a final Linear and LayerNorm;
  - channel-wise single-head cross-attention: the attention map is C x C
    (channels attend to channels, over the N = H*W positions),
    softmax(z_query^T z_in / sqrt(N)) applied to z_in; "vanilla" attention
    without projections (the paper's 2.2M adapter parameters are the fusion
    and scaling layers), then LayerNorm;
  - time scaling: t_emb -> Linear -> SiLU -> Linear gives a per-channel
    alpha_t in [0, 1].

  Fusion and cross-attention modules are *shared* by every attention block of
  the same width (one module object per width); each block has its own
  time-scaling module.

Exactness at initialisation: the scaling MLP's last layer starts at zero, so
alpha_t = 0 and h_out = FF(z_in), exactly the source model. alpha_t is
``clamp(s, 0, 1)`` with a straight-through gradient: a plain clamp passes no
gradient at s = 0, so the adapter could never open.

Attachment: a forward pre-hook on each block's ``to_out[0]`` rewrites its
input z_in (diffusers' attention processors are left untouched), and a forward
hook on the UNet's ``time_embedding`` captures t_emb for the adapters.

Loss: the denoising loss (``naive.DenoisingLoss``), hybrid L_simple + lambda
L_vlb when the model learns variance (6 output channels), as in the paper.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..models.adapted import Adapter, AdaptedUNet, register_adapter
from ..models.lora import limit_lora
from ..models.text_to_image import text_conditioning_of
from .base import check_choice

__all__ = ["A3FTAdapter", "CROSS_ATTENTION", "attention_blocks", "cross_attention_layers", "freeze_all_but_attention",
           "prepare_a3ft", "prepare_attn"]

#: ``methods.attn.cross_attention`` -> the layers of each cross-attention that ``attn`` trains on a
#: text-to-image UNet (None: all of it). Custom Diffusion's ``--freeze_model``: "crossattn_kv" (its
#: default) trains ``to_k`` and ``to_v``, "crossattn" ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` too,
#: the whole of an SD cross-attention (huggingface/diffusers at 58eb52c,
#: examples/custom_diffusion/train_custom_diffusion.py: ``train_kv = True``,
#: ``train_q_out = False if args.freeze_model == "crossattn_kv" else True``).
CROSS_ATTENTION: dict[str, tuple[str, ...] | None] = {"kv": ("to_k", "to_v"), "all": None}


def attention_blocks(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The diffusers ``Attention`` modules of a UNet2DModel, in module order."""
    from diffusers.models.attention_processor import Attention

    return [(name, m) for name, m in unet.named_modules() if isinstance(m, Attention)]


def cross_attention_layers(unet: nn.Module, which: str = "kv") -> list[str]:
    """The names of the modules ``attn`` trains in a text-to-image UNet: in
    each cross-attention (``attn2`` of diffusers' BasicTransformerBlock, the
    ``Attention`` whose keys and values come from ``encoder_hidden_states``:
    ``is_cross_attention``), the layers :data:`CROSS_ATTENTION` names, or
    the whole module."""
    parts = CROSS_ATTENTION[check_choice("cross_attention", which, tuple(CROSS_ATTENTION))]
    names = [name for name, block in attention_blocks(unet) if block.is_cross_attention]
    return names if parts is None else [f"{name}.{part}" for name in names for part in parts]


def freeze_all_but_attention(unet: nn.Module) -> nn.Module:
    blocks = attention_blocks(unet)
    if not blocks:
        raise ValueError("this UNet has no attention blocks: attn / a3ft need some (e.g. AttnDownBlock2D)")
    unet.requires_grad_(False)
    for _, block in blocks:
        block.requires_grad_(True)
    return unet


class _StraightThroughClamp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad):
        return grad


class TimeFusion(nn.Module):
    """z_query = LN(Linear(z_in + MLP(t_emb)))  (Eq. 1, App. C.4)."""

    def __init__(self, time_dim: int, width: int) -> None:
        super().__init__()
        self.time = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.out = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, z_in: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self.norm(self.out(z_in + self.time(t_emb)[:, None, :]))


class ChannelCrossAttention(nn.Module):
    """z_out = LN(softmax(q^T k / sqrt(N)) v^T)^T with channels as tokens (Eq. 2)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
        # (B, N, C) -> (B, C, N): each channel is a token of length N.
        q, kv = query.transpose(1, 2), key_value.transpose(1, 2)
        attn = torch.softmax(q @ kv.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, C, C)
        return self.norm((attn @ kv).transpose(1, 2))


class TimeScaling(nn.Module):
    """alpha_t in [0, 1]^C from t_emb; exactly 0 at initialisation."""

    def __init__(self, time_dim: int, width: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, width))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, t_emb: torch.Tensor) -> torch.Tensor:
        return _StraightThroughClamp.apply(self.mlp(t_emb))


class BlockAdapter(nn.Module):
    """One attention block's adapter: its own time scaling, plus references to
    the shared fusion and cross-attention modules of its width (held by the
    :class:`A3FTAdapter`, not registered here, so each is saved once)."""

    def __init__(self, owner: "A3FTAdapter", width: int, time_dim: int, hidden: int) -> None:
        super().__init__()
        self.scaling = TimeScaling(time_dim, width, hidden)
        self.width = width
        object.__setattr__(self, "_owner", owner)

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...]):
        (z_in, *rest) = args
        owner = self._owner
        t_emb = owner.t_emb
        if t_emb is None:
            raise RuntimeError("A3FT adapter called outside a UNet forward (no time embedding captured)")
        t_emb = t_emb.to(z_in.dtype)
        key = str(self.width)
        z_query = owner.fusion[key](z_in, t_emb)
        z_out = owner.cross_attention[key](z_query, z_in)
        alpha = self.scaling(t_emb)[:, None, :].to(z_in.dtype)
        return ((1.0 - alpha) * z_in + alpha * z_out, *rest)


@register_adapter
class A3FTAdapter(Adapter):
    """Time-aware adapters for every attention block of a UNet2DModel."""

    kind = "a3ft"

    def __init__(self, unet: nn.Module, scaling_hidden: int = 64) -> None:
        super().__init__({"scaling_hidden": int(scaling_hidden)})
        if scaling_hidden < 1:
            raise ValueError(f"scaling_hidden must be >= 1, got {scaling_hidden}")
        blocks = attention_blocks(unet)
        if not blocks:
            raise ValueError("this UNet has no attention blocks: a3ft needs some (e.g. AttnDownBlock2D)")
        time_dim = unet.time_embedding.linear_2.out_features
        widths = sorted({b.to_out[0].in_features for _, b in blocks})
        self.fusion = nn.ModuleDict({str(w): TimeFusion(time_dim, w) for w in widths})
        self.cross_attention = nn.ModuleDict({str(w): ChannelCrossAttention(w) for w in widths})
        self.blocks = nn.ModuleList(
            [BlockAdapter(self, b.to_out[0].in_features, time_dim, scaling_hidden) for _, b in blocks]
        )
        self.block_names = [name for name, _ in blocks]
        self.t_emb: torch.Tensor | None = None

    def attach(self, unet: nn.Module) -> None:
        unet.time_embedding.register_forward_hook(self._capture_time_embedding)
        for (_, block), adapter in zip(attention_blocks(unet), self.blocks):
            block.to_out[0].register_forward_pre_hook(adapter.pre_hook)

    def _capture_time_embedding(self, module, args, output):
        self.t_emb = output

    def end(self) -> None:
        self.t_emb = None  # never keep a graph (or break deepcopy) between calls


def prepare_attn(unet: nn.Module, cross_attention: str = "kv") -> nn.Module:
    """``attn``: the UNet itself with only the attention blocks trainable; on
    a text-to-image UNet, only the cross-attention layers ``cross_attention``
    selects (:func:`cross_attention_layers`), and a LoRA goes into those only
    (``limit_lora``). ``cross_attention`` is ignored on other models: A3FT's
    baseline trains their attention blocks whole (a class-context latent
    UNet's cross-attention included)."""
    if text_conditioning_of(unet) is None:
        return freeze_all_but_attention(unet)
    names = cross_attention_layers(unet, cross_attention)
    if not names:
        raise ValueError("this text-to-image UNet has no cross-attention: attn trains its cross-attention layers")
    unet.requires_grad_(False)
    for name in names:
        unet.get_submodule(name).requires_grad_(True)
    layers = "key and value projections" if cross_attention == "kv" else "layers"
    return limit_lora(unet, names, f"attn trains only the cross-attention {layers} of a text-to-image model "
                                   f"(methods.attn.cross_attention: {cross_attention})")


def prepare_a3ft(unet: nn.Module, scaling_hidden: int = 64) -> AdaptedUNet:
    """``a3ft``: attention blocks + time-aware adapters trainable, the rest frozen."""
    freeze_all_but_attention(unet)
    return AdaptedUNet(unet, A3FTAdapter(unet, scaling_hidden=scaling_hidden))
