"""The CompVis latent-diffusion side of the LDM conversion tests: a compact,
independent re-implementation of a ``LatentDiffusion`` model's weights --
openaimodel's ``UNetModel`` with ``SpatialTransformer`` cross-attention
(``model.diffusion_model``), model.py's VQ ``Encoder`` / ``Decoder`` with
taming's ``VectorQuantizer2`` (``first_stage_model``, ``VQModelInterface``'s
encode / decode) and the ``ClassEmbedder`` (``cond_stage_model``) -- with the
same module tree (so the same state-dict keys) and the same forward maths;
the tiny configurations it is built at, and ``reference``: one randomly
initialised with nothing left at zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_transfer.core.models.ldm import LDMConfig

# Two levels, a transformer at rate 2 (and the middle), one head per transformer (cin256-v2's layout).
TINY = LDMConfig(
    unet=dict(image_size=8, model_channels=32, channel_mult=(1, 2), attention_resolutions=(2,), num_res_blocks=1,
              context_dim=16),
    first_stage=dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16, n_embed=32),
    n_classes=5,
)
# Three levels, two ResBlocks, transformers at rates 1 and 4, heads of 16 channels, two blocks per transformer;
# a VQ level that keeps its channels (no shortcut conv).
TINY_DEEP = LDMConfig(
    unet=dict(image_size=8, model_channels=32, channel_mult=(1, 2, 3), attention_resolutions=(1, 4), num_res_blocks=2,
              num_head_channels=16, transformer_depth=2, context_dim=24),
    first_stage=dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, resolution=16, n_embed=48, z_channels=4),
    n_classes=7,
)


def gn(ch: int, eps: float) -> nn.GroupNorm:
    return nn.GroupNorm(32, ch, eps=eps)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """LDM util.timestep_embedding: [cos, sin], frequencies exp(-ln(10000) i / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# --------------------------------------------------------------------------- UNet


class ResBlock(nn.Module):
    def __init__(self, ch: int, emb: int, out: int):
        super().__init__()
        self.in_layers = nn.Sequential(gn(ch, 1e-5), nn.SiLU(), nn.Conv2d(ch, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, out))
        self.out_layers = nn.Sequential(gn(out, 1e-5), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if ch == out else nn.Conv2d(ch, out, 1)

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]  # use_scale_shift_norm=False
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, ctx_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(ctx_dim, dim, bias=False)
        self.to_v = nn.Linear(ctx_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x, ctx):
        b, n, d = x.shape
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(ctx), self.to_v(ctx)))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        return self.to_out((weights @ v).transpose(1, 2).reshape(b, n, d))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, ctx_dim: int, heads: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, ctx_dim, heads)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, ctx):
        x = self.attn1(self.norm1(x), self.norm1(x)) + x  # self-attention
        x = self.attn2(self.norm2(x), ctx) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, ch: int, heads: int, depth: int, ctx_dim: int):
        super().__init__()
        self.norm = gn(ch, 1e-6)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList(BasicTransformerBlock(ch, ctx_dim, heads) for _ in range(depth))
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x, ctx):
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            t = block(t, ctx)
        return self.proj_out(t.transpose(1, 2).reshape(b, c, h, w)) + x


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Seq(nn.Sequential):
    """TimestepEmbedSequential: ResBlocks get the embedding, transformers the context."""

    def forward(self, x, emb, ctx):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, ctx)
            else:
                x = layer(x)
        return x


class RefLDMUNet(nn.Module):
    """openaimodel.UNetModel(use_spatial_transformer=True, legacy=True): same keys and maths."""

    def __init__(self, cfg: LDMConfig):
        super().__init__()
        u = cfg.unet
        mc, emb = u.model_channels, 4 * u.model_channels
        self.model_channels = mc
        # legacy=True: num_heads heads, or ch // num_head_channels heads when that is set
        st = lambda ch: SpatialTransformer(  # noqa: E731
            ch, u.num_heads if u.num_head_channels == -1 else ch // u.num_head_channels, u.transformer_depth,
            u.context_dim)
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([Seq(nn.Conv2d(u.in_channels, mc, 3, padding=1))])
        chans, ch, last = [mc], mc, len(u.channel_mult) - 1
        for lv, mult in enumerate(u.channel_mult):
            for _ in range(u.num_res_blocks):
                layers = [ResBlock(ch, emb, mult * mc)]
                ch = mult * mc
                if 2**lv in u.attention_resolutions:
                    layers.append(st(ch))
                self.input_blocks.append(Seq(*layers))
                chans.append(ch)
            if lv != last:
                self.input_blocks.append(Seq(Downsample(ch)))
                chans.append(ch)
        self.middle_block = Seq(ResBlock(ch, emb, ch), st(ch), ResBlock(ch, emb, ch))
        self.output_blocks = nn.ModuleList()
        for lv, mult in reversed(list(enumerate(u.channel_mult))):
            for i in range(u.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb, mult * mc)]
                ch = mult * mc
                if 2**lv in u.attention_resolutions:
                    layers.append(st(ch))
                if lv and i == u.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(Seq(*layers))
        self.out = nn.Sequential(gn(ch, 1e-5), nn.SiLU(), nn.Conv2d(mc, u.out_channels, 3, padding=1))

    def forward(self, x, t, context):
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


# --------------------------------------------------------------------------- VQ autoencoder


class ResnetBlock(nn.Module):
    def __init__(self, ch: int, out: int):
        super().__init__()
        self.norm1, self.conv1 = gn(ch, 1e-6), nn.Conv2d(ch, out, 3, padding=1)
        self.norm2, self.conv2 = gn(out, 1e-6), nn.Conv2d(out, out, 3, padding=1)
        if ch != out:
            self.nin_shortcut = nn.Conv2d(ch, out, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm = gn(ch, 1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, c, h * w) for m in (self.q, self.k, self.v))
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c**-0.5, dim=2)
        return x + self.proj_out(torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, h, w))


def _mid(ch: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(ch, ch), AttnBlock(ch), ResnetBlock(ch, ch)
    return mid


def _run_mid(mid: nn.Module, h):
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: LDMConfig):
        super().__init__()
        vq = cfg.first_stage
        chans = vq.block_channels
        self.conv_in = nn.Conv2d(vq.in_channels, chans[0], 3, padding=1)
        self.down, ch = nn.ModuleList(), chans[0]
        for i, out in enumerate(chans):
            level = nn.Module()
            level.block = nn.ModuleList(ResnetBlock(ch if j == 0 else out, out) for j in range(vq.num_res_blocks))
            level.attn = nn.ModuleList()
            ch = out
            if i != len(chans) - 1:
                level.downsample = nn.Module()
                level.downsample.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)
            self.down.append(level)
        self.mid = _mid(ch)
        self.norm_out, self.conv_out = gn(ch, 1e-6), nn.Conv2d(ch, vq.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):  # pad right and bottom by one, then a stride-2 valid conv
                h = level.downsample.conv(F.pad(h, (0, 1, 0, 1)))
        return self.conv_out(F.silu(self.norm_out(_run_mid(self.mid, h))))


class Decoder(nn.Module):
    def __init__(self, cfg: LDMConfig):
        super().__init__()
        vq = cfg.first_stage
        chans = vq.block_channels
        ch = chans[-1]
        self.conv_in = nn.Conv2d(vq.z_channels, ch, 3, padding=1)
        self.mid = _mid(ch)
        levels = {}
        for i in reversed(range(len(chans))):
            level = nn.Module()
            level.block = nn.ModuleList(ResnetBlock(ch if j == 0 else chans[i], chans[i])
                                        for j in range(vq.num_res_blocks + 1))
            level.attn = nn.ModuleList()
            ch = chans[i]
            if i != 0:
                level.upsample = Upsample(ch)
            levels[i] = level
        self.up = nn.ModuleList(levels[i] for i in range(len(chans)))
        self.norm_out, self.conv_out = gn(ch, 1e-6), nn.Conv2d(ch, vq.out_ch, 3, padding=1)

    def forward(self, z):
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, n: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n, dim)

    def forward(self, z):
        """(quantised z, code indices): the nearest codebook vector per position."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        codes = self.embedding.weight
        dist = (flat**2).sum(1, keepdim=True) + (codes**2).sum(1) - 2 * flat @ codes.t()
        idx = dist.argmin(1)
        zq = codes[idx].reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        return zq, idx


class RefVQ(nn.Module):
    """VQModelInterface: encode = pre-quantisation latents, decode = quantise + decode."""

    def __init__(self, cfg: LDMConfig):
        super().__init__()
        vq = cfg.first_stage
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantize = VectorQuantizer(vq.n_embed, vq.embed_dim)
        self.quant_conv = nn.Conv2d(vq.z_channels, vq.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(vq.embed_dim, vq.z_channels, 1)

    def encode(self, x):
        return self.quant_conv(self.encoder(x))

    def decode(self, h):
        return self.decoder(self.post_quant_conv(self.quantize(h)[0]))


# --------------------------------------------------------------------------- the whole checkpoint


class ClassEmbedder(nn.Module):
    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_classes, dim)

    def forward(self, y):
        return self.embedding(y[:, None])  # (B, 1, dim): one context token


class RefLDM(nn.Module):
    """A LatentDiffusion's weights: ``state_dict()`` has the checkpoint's keys."""

    def __init__(self, cfg: LDMConfig):
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = RefLDMUNet(cfg)
        self.first_stage_model = RefVQ(cfg)
        self.cond_stage_model = ClassEmbedder(cfg.n_classes, cfg.unet.context_dim)

    def eps(self, x, t, y):
        return self.model.diffusion_model(x, t, self.cond_stage_model(y))


def reference(cfg: LDMConfig, seed: int = 0) -> RefLDM:
    """A RefLDM with random weights, nothing left at zero (norm scales near 1)."""
    model = RefLDM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
        model.first_stage_model.quantize.embedding.weight.mul_(3.0)  # codes spread like the latents
    return model


def checkpoint(cfg: LDMConfig, seed: int = 0, betas: bool = True) -> dict[str, torch.Tensor]:
    """A LatentDiffusion state dict: the weights plus (``betas``) the schedule buffers."""
    sd = dict(reference(cfg, seed).state_dict())
    if betas:
        b = torch.linspace(cfg.linear_start**0.5, cfg.linear_end**0.5, cfg.timesteps, dtype=torch.float64) ** 2
        sd["betas"] = b.float()
        sd["alphas_cumprod"] = torch.cumprod(1 - b, 0).float()
    return sd
