"""The guided-diffusion (ADM) side of the conversion tests: a compact,
independent re-implementation of guided-diffusion's ``UNetModel``
(``RefADMUNet``: same module tree, so the same state-dict keys, and the same
forward maths, legacy QKV attention and ``label_emb`` included), the tiny
configurations it is built at, and ``reference``: one randomly initialised
with nothing left at zero. improved-diffusion's ``UNetModel`` is the same net
with a fixed head count, conv resamplers and the legacy QKV order (TINY_IMPROVED*).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_transfer.core.models.adm import IMPROVED_IMAGENET64, ADMConfig

# The brief's tiny net: 2 levels, attention at 8x8 (ds 2), 2 and 4 heads of 16 channels.
TINY = ADMConfig(
    image_size=16,
    num_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 2),
    attention_resolutions=(8,),
    num_head_channels=16,
)


def variant(**changes) -> ADMConfig:
    """TINY with ``changes``, validated (``model_copy(update=...)`` would not validate)."""
    return ADMConfig(**{**TINY.model_dump(), **changes})


# Three levels, two ResBlocks per level, attention at the first and last level.
TINY_DEEP = variant(channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(16, 4))
# ADM's other options: conv resamplers, additive time embedding, 3 outputs, new QKV order, fixed head count.
TINY_PLAIN = variant(
    resblock_updown=False,
    use_scale_shift_norm=False,
    learn_sigma=False,
    use_new_attention_order=True,
    num_head_channels=-1,
    num_heads=2,
    attention_resolutions=(16,),
    channel_mult=(1, 1),
)

# improved-diffusion's ImageNet-64 net at width 32 on 16x16 images: 4 levels (1,2,3,4), 3 ResBlocks,
# attention at ds 4 and 8 with 4 heads of 24 and 32 channels, rescaled timesteps, T=4000 cosine.
TINY_IMPROVED = ADMConfig(**{
    **IMPROVED_IMAGENET64.model_dump(), "image_size": 16, "num_channels": 32, "attention_resolutions": (4, 2),
})
_IMPROVED_BASE = {"image_size": 16, "num_channels": 32, "channel_mult": (1, 2, 3), "attention_resolutions": (8, 4),
                  "num_head_channels": -1, "num_heads": 2, "resblock_updown": False}
# Class-conditional, learned sigma, more heads on the way up, rescaled timesteps, T=4000 cosine.
TINY_IMPROVED_COND = ADMConfig(**_IMPROVED_BASE, num_res_blocks=1, num_heads_upsample=4, class_cond=True,
                               num_classes=7, diffusion_steps=4000, noise_schedule="cosine", rescale_timesteps=True)
# Unconditional eps-only, additive time embedding, T=1000 (rescaling by 1000/T is then the identity).
TINY_IMPROVED_EPS = ADMConfig(**_IMPROVED_BASE, num_res_blocks=2, learn_sigma=False, use_scale_shift_norm=False,
                              rescale_timesteps=True)


# --------------------------------------------------------------------------- reference ADM


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """guided-diffusion nn.timestep_embedding: [cos, sin], freqs exp(-ln(P) i / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(ch: int) -> nn.Module:
    return GroupNorm32(32, ch)


def legacy_qkv_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """QKVAttentionLegacy: qkv (B, H*3*C, T) split per head into q, k, v."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.reshape(b * heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)


def new_order_qkv_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """QKVAttention: qkv (B, 3*H*C, T) split into q, k, v first."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.chunk(3, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum(
        "bct,bcs->bts", (q * scale).view(b * heads, ch, length), (k * scale).view(b * heads, ch, length)
    )
    weight = torch.softmax(weight, dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v.reshape(b * heads, ch, length)).reshape(b, -1, length)


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, out_ch, scale_shift, up=False, down=False):
        super().__init__()
        self.scale_shift, self.up, self.down = scale_shift, up, down
        self.in_layers = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch))
        self.out_layers = nn.Sequential(
            normalization(out_ch), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def _resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x, emb):
        h = self.in_layers[:-1](x)
        h, x = self._resample(h), self._resample(x)
        h = self.in_layers[-1](h)
        emb_out = self.emb_layers(emb)[..., None, None]
        if self.scale_shift:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch, heads, legacy):
        super().__init__()
        self.heads, self.legacy = heads, legacy
        self.norm = normalization(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        attend = legacy_qkv_attention if self.legacy else new_order_qkv_attention
        h = self.proj_out(attend(self.qkv(self.norm(x)), self.heads))
        return (x + h).reshape(b, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Seq(nn.Sequential):
    """TimestepEmbedSequential: ResBlocks get the embedding."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class RefADMUNet(nn.Module):
    """guided-diffusion UNetModel, built from an ADMConfig's raw fields; called
    with the timesteps the net sees (see :func:`net_timesteps`) and, when
    class-conditional, the labels."""

    def __init__(self, cfg: ADMConfig):
        super().__init__()
        mc, ss, legacy = cfg.num_channels, cfg.use_scale_shift_norm, not cfg.use_new_attention_order
        attention_ds = {cfg.image_size // r for r in cfg.attention_resolutions}
        emb_ch = 4 * mc
        self.model_channels = mc

        def attention(ch, up=False):
            if cfg.num_head_channels != -1:
                heads = ch // cfg.num_head_channels
            else:
                heads = cfg.num_heads_upsample if up and cfg.num_heads_upsample != -1 else cfg.num_heads
            return AttentionBlock(ch, heads, legacy)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if cfg.class_cond:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_ch)
        ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([Seq(nn.Conv2d(3, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb_ch, int(mult * mc), ss)]
                ch = int(mult * mc)
                if ds in attention_ds:
                    layers.append(attention(ch))
                self.input_blocks.append(Seq(*layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = ResBlock(ch, emb_ch, ch, ss, down=True) if cfg.resblock_updown else Downsample(ch)
                self.input_blocks.append(Seq(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = Seq(ResBlock(ch, emb_ch, ch, ss), attention(ch), ResBlock(ch, emb_ch, ch, ss))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb_ch, int(mc * mult), ss)]
                ch = int(mc * mult)
                if ds in attention_ds:
                    layers.append(attention(ch, up=True))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb_ch, ch, ss, up=True) if cfg.resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Seq(*layers))
        out_ch = 6 if cfg.learn_sigma else 3
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))

    def forward(self, x, t, y=None):
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if hasattr(self, "label_emb"):
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def reference(cfg: ADMConfig, seed: int = 0) -> RefADMUNet:
    """A RefADMUNet with random weights everywhere: ADM zero-inits proj_out and the
    last convs, and GroupNorm starts at (1, 0); none of that may survive here, or a
    wrong mapping of those tensors would go unnoticed."""
    torch.manual_seed(seed)
    model = RefADMUNet(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "label_emb.weight":  # as large as the time embedding it is added to
                p.normal_(0.0, 1.0)
            elif ".norm." in f".{name}" or "layers.0." in name or name.startswith("out.0"):  # GroupNorm affine
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
            else:  # unit-variance outputs for unit-variance inputs
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
    return model.eval()


def _inputs(cfg: ADMConfig, batch: int = 4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)
    t = torch.tensor([0, 1, 437, cfg.diffusion_steps - 1][:batch])
    return x, t


def net_timesteps(t: torch.Tensor, cfg: ADMConfig) -> torch.Tensor:
    """What ADM's diffusion passes the net (improved-diffusion ``_scale_timesteps``)."""
    return t.float() * (1000.0 / cfg.diffusion_steps) if cfg.rescale_timesteps else t


def labels(cfg: ADMConfig, batch: int = 4, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, cfg.num_classes, (batch,), generator=torch.Generator().manual_seed(seed))
