"""core/models/adm.py: guided-diffusion (ADM) checkpoint -> diffusers UNet2DModel:
the key layout and the numerics.

The checkpoints here come from a compact, independent re-implementation of
guided-diffusion's ``UNetModel`` (``RefADMUNet`` in tests/core/_adm_reference.py:
same module tree, so the same state-dict keys, and the same forward maths,
legacy QKV attention included), randomly initialised with nothing left at zero.
The converted diffusers model must reproduce its outputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from diffusion_transfer.core.models.adm import (
    FFHQ_P2,
    adm_unet_config,
    convert_adm_checkpoint,
    convert_adm_state_dict,
)
from tests.core._adm_reference import (
    TINY,
    TINY_DEEP,
    TINY_PLAIN,
    RefADMUNet,
    _inputs,
    legacy_qkv_attention,
    new_order_qkv_attention,
    reference,
    variant,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


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
