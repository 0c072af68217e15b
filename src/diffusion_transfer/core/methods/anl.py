"""ANL: "Attention-NonLinear" modules (Transferring Pretrained Diffusion
Probabilistic Models, section 3), conditional and unconditional.

An ANL module follows each residual block i of the frozen UNet and adds to its
output h_i (B, C_i, H, W), seen as N = H*W tokens:

    ANL(h_i, c) = f(Attention(Q = W_Q h_i, K = W_K c, V = W_V c))       (8, 9)
    h_i <- h_i + ANL(h_i, c)

with c = phi(x) the frozen CLIP image embedding of the condition image
(L2-normalised; one token by default, or M tokens), single-head
softmax(QK^T / sqrt(d_k)) V, and f = Linear -> GELU -> Linear whose output
layer starts at zero, so that the adapted model computes exactly the source
model at initialisation. Only the ANL modules train (Eq. 10); the UNet and CLIP
stay frozen. With one pooled embedding per image the softmax runs over a
single key, so every position receives f(W_V c): a learned,
condition-dependent correction per block (see :class:`ANLModule`).

``naive_clip`` (Fig. 4): the conditional modules with the whole UNet tuned
as well, the CLIP-conditioned Tuning-All baseline; saved as an ``anl`` model.

``anl_uncond`` (section 3.3, "unconditional generation"): the same module with
self-attention (Q, K, V all from LayerNorm(h_i)) and no CLIP.

Conditions for sampling: the CLIP embedding of a condition image, optionally
masked with rate delta (:func:`mask_rectangle`, section 3.3), or of a text
prompt (:func:`text_conditions`), since CLIP embeds both in one space.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..models import adapted as _adapted
from ..models.adapted import Adapter, AdaptedUNet

__all__ = [
    "ANLAdapter",
    "ANLModule",
    "image_conditions",
    "mask_rectangle",
    "masked_images",
    "prepare_anl",
    "residual_blocks",
    "text_conditions",
]


def residual_blocks(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The diffusers ``ResnetBlock2D`` modules of a UNet2DModel, in module order."""
    from diffusers.models.resnet import ResnetBlock2D

    return [(name, m) for name, m in unet.named_modules() if isinstance(m, ResnetBlock2D)]


class ANLModule(nn.Module):
    """Attention (cross to the condition tokens, or self) then
    Linear-GELU-Linear, added to the block's output.

    With a single condition token (a pooled CLIP embedding, the default) the
    softmax runs over one key and is identically 1, so Eq. 8 reduces exactly
    to V = W_V c at every position; W_Q (and the query's LayerNorm) would
    never receive a gradient and are not created."""

    def __init__(self, width: int, condition_dim: int | None, condition_tokens: int = 1,
                 dim: int | None = None, hidden: int | None = None):
        super().__init__()
        dim = dim or width
        hidden = hidden or width
        self.conditional = condition_dim is not None
        self.uses_query = not self.conditional or condition_tokens > 1
        if self.uses_query:
            self.norm = nn.LayerNorm(width)
            self.to_q = nn.Linear(width, dim, bias=False)
        kv_in = condition_dim if self.conditional else width
        if self.conditional:
            self.to_k = nn.Linear(kv_in, dim, bias=False) if self.uses_query else None
        else:
            self.to_k = nn.Linear(kv_in, dim, bias=False)
        self.to_v = nn.Linear(kv_in, dim, bias=False)
        self.nonlinear = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, width))
        nn.init.zeros_(self.nonlinear[2].weight)
        nn.init.zeros_(self.nonlinear[2].bias)

    def forward(self, h: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        b, c, hh, ww = h.shape
        if self.conditional:
            context = condition.to(h.dtype)
            context = context[:, None, :] if context.ndim == 2 else context  # (B, M, d_c)
        if self.uses_query:
            tokens = self.norm(h.flatten(2).transpose(1, 2))  # (B, N, C)
            context = tokens if not self.conditional else context
            q, k, v = self.to_q(tokens), self.to_k(context), self.to_v(context)
            attn = F.scaled_dot_product_attention(q, k, v)  # softmax(QK^T / sqrt(d_k)) V, one head
            out = self.nonlinear(attn)  # (B, N, C)
            return h + out.transpose(1, 2).reshape(b, c, hh, ww)
        out = self.nonlinear(self.to_v(context[:, 0]))  # one key: attention == V, the same at every position
        return h + out[:, :, None, None]


class ANLAdapter(Adapter):
    """One ANL module after every residual block. ``condition_dim`` None is
    the unconditional variant (self-attention)."""

    def __init__(self, unet: nn.Module, condition_dim: int | None = None, hidden_mult: float = 1.0,
                 condition_tokens: int = 1) -> None:
        super().__init__({"condition_dim": condition_dim, "hidden_mult": float(hidden_mult),
                          "condition_tokens": int(condition_tokens)})
        if condition_dim is not None and (not isinstance(condition_dim, int) or condition_dim < 1):
            raise ValueError(f"condition_dim must be a positive int or null, got {condition_dim!r}")
        if condition_tokens < 1:
            raise ValueError(f"condition_tokens must be >= 1, got {condition_tokens}")
        if hidden_mult <= 0:
            raise ValueError(f"hidden_mult must be > 0, got {hidden_mult}")
        blocks = residual_blocks(unet)
        if not blocks:
            raise ValueError("this UNet has no residual blocks (ResnetBlock2D) to attach ANL modules to")
        self.needs_condition = condition_dim is not None
        self.modules_ = nn.ModuleList(
            [
                ANLModule(b.out_channels, condition_dim, condition_tokens,
                          hidden=max(1, int(round(b.out_channels * hidden_mult))))
                for _, b in blocks
            ]
        )
        self.block_names = [name for name, _ in blocks]
        self.condition: torch.Tensor | None = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "anl" if self.needs_condition else "anl_uncond"

    def attach(self, unet: nn.Module) -> None:
        for (_, block), module in zip(residual_blocks(unet), self.modules_):
            block.register_forward_hook(_ANLHook(self, module))

    def begin(self, condition: torch.Tensor | None, batch: int) -> None:
        super().begin(condition, batch)
        if condition is not None:
            d, m = self.config["condition_dim"], self.config["condition_tokens"]
            ok = (condition.ndim == 2 and m == 1 and condition.shape[1] == d) or (
                condition.ndim == 3 and condition.shape[1:] == (m, d))
            if not ok:
                want = f"(B, {d})" if m == 1 else f"(B, {m}, {d})"
                raise ValueError(f"ANL condition must have shape {want}, got {tuple(condition.shape)}")
        self.condition = condition

    def end(self) -> None:
        self.condition = None


class _ANLHook:
    """Forward hook adding an ANL module's output to a residual block's output.
    A plain object holding (adapter, module) so ``copy.deepcopy`` re-binds it."""

    def __init__(self, adapter: ANLAdapter, module: ANLModule) -> None:
        self.adapter, self.module = adapter, module

    def __call__(self, block: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return self.module(output, self.adapter.condition)


# Both saved kinds ("anl", "anl_uncond") load as an ANLAdapter.
_adapted.register_adapter(ANLAdapter, kinds=("anl", "anl_uncond"))


def prepare_anl(unet: nn.Module, condition_dim: int | None, hidden_mult: float = 1.0,
                tune_unet: bool = False) -> AdaptedUNet:
    """Attach ANL modules. They are the only trainable parameters (Eq. 10)
    unless ``tune_unet``: then the whole UNet trains with them, ANL's Fig. 4
    "Tuning-All [that] also utilizes the CLIP embeddings" (``naive_clip``)."""
    unet.requires_grad_(tune_unet)
    return AdaptedUNet(unet, ANLAdapter(unet, condition_dim=condition_dim, hidden_mult=hidden_mult))


# --- conditions ----------------------------------------------------------------


def mask_rectangle(height: int, width: int, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The (H, W) mask of section 3.3: ones with a zeroed rectangle of
    round(rate*H) x round(rate*W) whose upper-left corner is
    (rand(0, (1-rate)H), rand(0, (1-rate)W)); the lower-right corner is that
    corner plus (rate*H, rate*W), so the rectangle always lies inside the image."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"mask rate delta must be in [0, 1), got {rate}")
    mask = torch.ones(height, width)
    mh, mw = int(round(rate * height)), int(round(rate * width))
    if mh == 0 or mw == 0:
        return mask
    top = int(torch.randint(0, height - mh + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - mw + 1, (1,), generator=generator))
    mask[top : top + mh, left : left + mw] = 0.0
    return mask


def masked_images(images: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Condition images (B, 3, H, W) in [-1, 1] with one random rectangle each
    set to black (-1, i.e. 0 in [0, 1] pixel space, as X' = X * M there)."""
    out = images.clone()
    for i in range(images.shape[0]):
        m = mask_rectangle(images.shape[2], images.shape[3], rate, generator).to(images.device, images.dtype)
        out[i] = (images[i] + 1.0) * m - 1.0
    return out


def _normalise(e: torch.Tensor) -> torch.Tensor:
    return F.normalize(e.float(), dim=-1)


@torch.no_grad()
def image_conditions(clip, images: torch.Tensor) -> torch.Tensor:
    """c = phi(x): L2-normalised CLIP image embeddings of images in [-1, 1]."""
    return _normalise(clip.encode_images(images.clamp(-1, 1)))


@torch.no_grad()
def text_conditions(clip, prompts: list[str] | str) -> torch.Tensor:
    """L2-normalised CLIP text embeddings (text-to-image sampling, section 4)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"text prompts must be non-empty strings, got {prompts!r}")
    return _normalise(clip.encode_text(prompts))
