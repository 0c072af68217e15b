"""core/models/adm.py: guided-diffusion (ADM) checkpoint -> diffusers UNet2DModel.

The checkpoints here come from a compact, independent re-implementation of
guided-diffusion's ``UNetModel`` (``RefADMUNet`` below: same module tree, so
the same state-dict keys, and the same forward maths, legacy QKV attention
included), randomly initialised with nothing left at zero. The converted
diffusers model must reproduce its outputs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import nn

from diffusion_transfer.convert_adm import main as cli_main
from diffusion_transfer.core.models.adm import (
    FFHQ_P2,
    ADMCheckpointError,
    ADMConfig,
    adm_unet_config,
    convert_adm_checkpoint,
    convert_adm_state_dict,
)
from diffusion_transfer.core.models.unet import load_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py

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
    """guided-diffusion UNetModel (no class conditioning), built from an ADMConfig's raw fields."""

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

    def forward(self, x, t):
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
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
            if ".norm." in f".{name}" or "layers.0." in name or name.startswith("out.0"):  # GroupNorm affine
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
            else:  # unit-variance outputs for unit-variance inputs
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
    return model.eval()


def _inputs(cfg: ADMConfig, batch: int = 4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)
    t = torch.tensor([0, 1, 437, 999][:batch])
    return x, t


# --------------------------------------------------------------------------- key layout


def test_ffhq_p2_preset_unet_config():
    cfg = adm_unet_config(FFHQ_P2)
    assert cfg["block_out_channels"] == (128, 128, 256, 256, 512, 512)
    # Attention only at 16x16 (level 4), both ways; resnet up/down sampling everywhere.
    assert cfg["down_block_types"] == ("ResnetDownsampleBlock2D",) * 4 + ("AttnDownBlock2D", "ResnetDownsampleBlock2D")
    assert cfg["up_block_types"] == ("ResnetUpsampleBlock2D", "AttnUpBlock2D") + ("ResnetUpsampleBlock2D",) * 4
    assert (cfg["downsample_type"], cfg["upsample_type"]) == ("resnet", "resnet")
    assert cfg["resnet_time_scale_shift"] == "scale_shift" and cfg["attn_norm_num_groups"] == 32
    assert cfg["out_channels"] == 6 and cfg["attention_head_dim"] == 64
    assert cfg["flip_sin_to_cos"] is True and cfg["freq_shift"] == 0 and cfg["norm_eps"] == 1e-5


def _assert_complete(adm_sd, converted, cfg):
    with torch.device("meta"):
        target = UNet2DModel(**adm_unet_config(cfg)).state_dict()
    assert set(converted) == set(target), (set(converted) ^ set(target))
    bad = {k: (tuple(converted[k].shape), tuple(v.shape)) for k, v in target.items() if converted[k].shape != v.shape}
    assert not bad
    # Each ADM key is used once: the qkv tensors become three, all others one.
    n_qkv = sum(k.endswith((".qkv.weight", ".qkv.bias")) for k in adm_sd)
    assert len(converted) == len(adm_sd) + 2 * n_qkv


@pytest.mark.parametrize("cfg", [TINY, TINY_DEEP, TINY_PLAIN], ids=["tiny", "deep", "plain"])
def test_every_key_consumed_and_every_parameter_filled(cfg):
    adm_sd = reference(cfg).state_dict()
    converted = convert_adm_state_dict(adm_sd, cfg)
    _assert_complete(adm_sd, converted, cfg)
    model = convert_adm_checkpoint(adm_sd, cfg)
    for key, value in model.state_dict().items():
        assert torch.equal(value, converted[key]), key


def test_ffhq_p2_key_layout_shapes_only():
    # Full size on the meta device: the real key layout and shapes, no memory.
    with torch.device("meta"):
        adm_sd = RefADMUNet(FFHQ_P2).state_dict()
    # Pin the layout to guided-diffusion's (12 input blocks, attention at 16x16, the
    # up-ResBlock after the attention in output block 3) independently of both nets.
    assert adm_sd["input_blocks.9.1.qkv.weight"].shape == (1536, 512, 1)
    assert adm_sd["middle_block.1.proj_out.weight"].shape == (512, 512, 1)
    assert adm_sd["output_blocks.1.1.emb_layers.1.weight"].shape == (1024, 512)  # level-5 up ResBlock
    assert adm_sd["output_blocks.3.2.in_layers.2.weight"].shape == (512, 512, 3, 3)  # level-4 up ResBlock
    assert adm_sd["output_blocks.11.0.skip_connection.weight"].shape == (128, 256, 1, 1)
    assert adm_sd["out.2.weight"].shape == (6, 128, 3, 3)
    assert not any(k.startswith(("input_blocks.12.", "output_blocks.12.")) for k in adm_sd)
    assert len(adm_sd) == 362
    converted = convert_adm_state_dict(adm_sd, FFHQ_P2)
    _assert_complete(adm_sd, converted, FFHQ_P2)
    n_params = sum(v.numel() for v in converted.values())
    assert 93_000_000 < n_params < 94_000_000  # "93M parameter" ADM of the P2-weighting README


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "new_order"])
def test_attention_reordering_matches_direct_qkv_attention(legacy):
    cfg = variant(use_new_attention_order=not legacy)
    ref = reference(cfg)
    model = convert_adm_checkpoint(ref.state_dict(), cfg)
    ref_attn = ref.input_blocks[3][1]  # level 1, 64 channels, 4 heads of 16
    attn = model.down_blocks[1].attentions[0]
    assert ref_attn.heads == attn.heads == 4
    x = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # The ADM block written out: x + proj_out(attention(qkv(norm(x)))).
        flat = x.reshape(2, 64, -1)
        qkv = F.conv1d(ref_attn.norm(flat), ref_attn.qkv.weight, ref_attn.qkv.bias)
        attend = legacy_qkv_attention if legacy else new_order_qkv_attention
        want = flat + F.conv1d(attend(qkv, 4), ref_attn.proj_out.weight, ref_attn.proj_out.bias)
        got = attn(x).reshape(2, 64, -1)
        assert (got - want).abs().max().item() < 1e-5
        # The check has teeth: the naive split (no regrouping) gives something else.
        if legacy:
            naive = new_order_qkv_attention(qkv, 4)
            wrong = flat + F.conv1d(naive, ref_attn.proj_out.weight, ref_attn.proj_out.bias)
            assert (got - wrong).abs().max().item() > 1e-2


@pytest.mark.parametrize("cfg", [TINY, TINY_DEEP, TINY_PLAIN], ids=["tiny", "deep", "plain"])
def test_whole_model_matches_reference(cfg):
    ref = reference(cfg)
    model = convert_adm_checkpoint(ref.state_dict(), cfg)
    x, t = _inputs(cfg)
    with torch.no_grad():
        want = ref(x, t)
        got = model(x, t).sample
    assert got.shape == want.shape == (4, 6 if cfg.learn_sigma else 3, cfg.image_size, cfg.image_size)
    assert want.abs().mean() > 0.1  # a real signal, not a zero net
    assert (got - want).abs().max().item() < 1e-4


# --------------------------------------------------------------------------- errors


def _error(state_dict, cfg=TINY) -> str:
    with pytest.raises(ValueError) as info:
        convert_adm_checkpoint(state_dict, cfg)
    assert isinstance(info.value, ADMCheckpointError)
    return str(info.value)


def test_missing_extra_and_misshapen_keys_are_named():
    sd = reference(TINY).state_dict()
    missing = dict(sd)
    del missing["input_blocks.3.1.qkv.bias"]
    msg = _error(missing)
    assert "1 missing key" in msg and "input_blocks.3.1.qkv.bias" in msg

    extra = {**sd, "label_emb.weight": torch.zeros(10, 128)}
    msg = _error(extra)
    assert "1 unexpected key" in msg and "label_emb.weight" in msg and "class-conditional" in msg

    misshapen = {**sd, "out.2.weight": torch.zeros(3, 32, 3, 3)}
    msg = _error(misshapen)
    assert "out.2.weight: shape (3, 32, 3, 3), expected (6, 32, 3, 3)" in msg

    not_a_tensor = {**sd, "out.2.bias": [0.0] * 6}
    assert "out.2.bias: a list" in _error(not_a_tensor)


def test_checkpoint_of_another_config_names_the_keys():
    msg = _error(reference(TINY).state_dict(), TINY_DEEP)
    # TINY_DEEP attends at 16x16 (input block 1); its input block 3 is the 32->32 down ResBlock
    # where TINY has a 32->64 ResBlock (with a skip conv).
    assert "missing key" in msg and "input_blocks.1.1.qkv.weight" in msg
    assert "unexpected key" in msg and "input_blocks.3.0.skip_connection.weight" in msg
    assert "num_channels=32" in msg and "4 input_blocks (attention in [3])" in msg  # what the checkpoint looks like


def test_missing_and_unreadable_files(tmp_path):
    path = tmp_path / "models" / "ffhq_p2.pt"
    with pytest.raises(FileNotFoundError) as info:
        convert_adm_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "ffhq_p2.pt" in msg and "P2-weighting" in msg

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ADMCheckpointError, match="could not read"):
        convert_adm_checkpoint(garbage, TINY)


def test_loads_a_saved_checkpoint_and_unwraps_ddp_prefixes(tmp_path):
    sd = reference(TINY).state_dict()
    path = tmp_path / "model.pt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    model = convert_adm_checkpoint(path, TINY)
    assert torch.equal(model.conv_out.weight, sd["out.2.weight"])


def test_config_rejects_what_diffusers_cannot_express():
    with pytest.raises(ValueError, match="channel_mult\\[0\\] must be 1"):
        ADMConfig(channel_mult="0.5,1,2")
    with pytest.raises(ValueError, match="does not divide"):
        variant(num_head_channels=24)
    with pytest.raises(ValueError, match="same head width"):
        variant(num_head_channels=-1, num_heads=2, attention_resolutions=(16, 8))  # widths 16 and 32
    with pytest.raises(ValueError, match="not supported"):
        ADMConfig(class_cond=True)
    assert ADMConfig(channel_mult="1,1,2", attention_resolutions="32,16", image_size=64).channel_mult == (1, 1, 2)


# --------------------------------------------------------------------------- CLI


def test_cli_converts_into_a_loadable_folder(tmp_path, capsys):
    ref = reference(TINY)
    ckpt = tmp_path / "tiny_adm.pt"
    torch.save(ref.state_dict(), ckpt)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"image_size": 16, "num_channels": 32, "channel_mult": [1, 2]}))
    out = tmp_path / "models" / "tiny_diffusers"
    # JSON over the preset, flags over the JSON.
    argv = [str(ckpt), str(out), "--preset", "ffhq_p2", "--config", str(config),
            "--attention-resolutions", "8", "--num-head-channels", "16"]
    assert cli_main(argv) == 0
    assert "converted" in capsys.readouterr().out

    model = load_unet(out)
    x, t = _inputs(TINY)
    with torch.no_grad():
        assert (model(x, t).sample - ref(x, t)).abs().max().item() < 1e-4

    # An existing folder is kept unless --overwrite.
    assert cli_main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*argv, "--overwrite"]) == 0


def test_cli_errors_are_clear_messages(tmp_path, capsys):
    assert cli_main([str(tmp_path / "ffhq_p2.pt"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "P2-weighting" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()

    ckpt = tmp_path / "tiny_adm.pt"
    torch.save(reference(TINY).state_dict(), ckpt)
    assert cli_main([str(ckpt), str(tmp_path / "out")]) == 1  # the FFHQ preset does not fit
    assert "missing key" in capsys.readouterr().err

    assert cli_main([str(ckpt), str(tmp_path / "out"), "--channel-mult", "0.5,1"]) == 1
    assert "channel_mult" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "--config" in capsys.readouterr().out


def test_convert_source_node_converts_a_checkpoint_with_preset_overrides(tmp_path):
    """The Kedro node behind ``kedro run --pipeline=convert_source``."""
    from diffusion_transfer.pipeline_registry import register_pipelines
    from diffusion_transfer.pipelines.convert.nodes import convert_source

    ref = reference(TINY)
    ckpt = tmp_path / "tiny_adm.pt"
    torch.save(ref.state_dict(), ckpt)
    overrides = {k: v for k, v in TINY.model_dump().items() if v != FFHQ_P2.model_dump()[k]}
    model = convert_source({"checkpoint": str(ckpt), "preset": "ffhq_p2", "overrides": overrides})
    x, t = _inputs(TINY)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t).sample, ref(x, t), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="ffhq_p2.pt"):
        convert_source({"checkpoint": str(tmp_path / "missing.pt")})
    with pytest.raises(ValueError, match="preset"):
        convert_source({"checkpoint": str(ckpt), "preset": "lsun"})
    pipe = register_pipelines()["convert_source"]
    assert pipe.outputs() == {"converted_source_model"}
