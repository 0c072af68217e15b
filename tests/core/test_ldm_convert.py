"""core/models/ldm.py: CompVis latent-diffusion (cin256-v2: class-conditional
LDM + VQ-f4) checkpoint -> diffusers UNet2DConditionModel + VQModel +
DDIMScheduler: the key layout, the numerics, the one-hot class context and the
saved pipeline folder.

The checkpoints here come from ``RefLDM`` (tests/core/_ldm_reference.py), a
compact, independent re-implementation of the original modules with the same
state-dict keys and forward maths, randomly initialised with nothing at zero.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel, VQModel

from diffusion_transfer.core.models.ldm import (
    CIN256_V2,
    VQ_F4,
    class_context,
    convert_ldm_checkpoint,
    convert_ldm_state_dict,
    save_ldm_pipeline,
)
from diffusion_transfer.core.models.ldm_config import ldm_scheduler_config, ldm_unet_config, vq_model_config
from diffusion_transfer.core.models.ldm_keys import unet_key_plan, vq_key_plan
from tests.core._ldm_reference import TINY, TINY_DEEP, RefLDM, checkpoint, reference

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py

CONFIGS = pytest.mark.parametrize("cfg", [TINY, TINY_DEEP], ids=["tiny", "deep"])


def _inputs(cfg, seed=3):
    g = torch.Generator().manual_seed(seed)
    u = cfg.unet
    x = torch.randn(4, u.in_channels, u.image_size, u.image_size, generator=g)
    t = torch.tensor([0, 17, 500, cfg.timesteps - 1])
    y = torch.tensor([0, 2, cfg.n_classes - 1, 1])
    img = torch.rand(2, cfg.first_stage.in_channels, cfg.first_stage.resolution, cfg.first_stage.resolution,
                     generator=g) * 2 - 1
    return x, t, y, img


# --------------------------------------------------------------------------- presets and key layout


def test_cin256_v2_preset_is_the_compvis_config():
    # configs/latent-diffusion/cin256-v2.yaml and models/first_stage_models/vq-f4/config.yaml
    u = CIN256_V2.unet
    assert (u.image_size, u.in_channels, u.model_channels, u.num_res_blocks) == (64, 3, 192, 2)
    assert u.channel_mult == (1, 2, 3, 5) and u.attention_resolutions == (8, 4, 2)
    assert (u.num_heads, u.transformer_depth, u.context_dim) == (1, 1, 512)
    assert CIN256_V2.n_classes == 1001 and CIN256_V2.first_stage == VQ_F4
    assert (CIN256_V2.linear_start, CIN256_V2.linear_end, CIN256_V2.timesteps) == (0.0015, 0.0195, 1000)
    assert CIN256_V2.scale_factor == 1.0  # not set in cin256-v2.yaml: LatentDiffusion's default
    assert (VQ_F4.embed_dim, VQ_F4.n_embed, VQ_F4.ch, VQ_F4.ch_mult, VQ_F4.attn_resolutions) == (3, 8192, 128, (1, 2, 4), ())

    unet = ldm_unet_config(CIN256_V2)
    assert unet["block_out_channels"] == (192, 384, 576, 960)
    assert unet["down_block_types"] == ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3
    assert unet["up_block_types"] == ("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",)
    assert unet["attention_head_dim"] == (1, 1, 1, 1)  # one head as wide as the level
    assert (unet["encoder_hid_dim"], unet["encoder_hid_dim_type"], unet["cross_attention_dim"]) == (1001, "text_proj", 512)
    vq = vq_model_config(CIN256_V2)
    assert vq["block_out_channels"] == (128, 256, 512) and vq["scaling_factor"] == 1.0
    sched = ldm_scheduler_config(CIN256_V2)
    assert sched["beta_schedule"] == "scaled_linear" and sched["prediction_type"] == "epsilon"


def test_cin256_v2_full_key_layout_shapes_only():
    with torch.device("meta"):  # full size, no memory
        sd = RefLDM(CIN256_V2).state_dict()
    p = "model.diffusion_model."
    # Pinned against openaimodel's layout: level 1's first block has a transformer (rate 2) ...
    assert sd[f"{p}input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"].shape == (384, 512)
    assert sd[f"{p}input_blocks.3.0.op.weight"].shape == (192, 192, 3, 3)  # level 0's downsampler
    assert sd[f"{p}middle_block.1.proj_in.weight"].shape == (960, 960, 1, 1)
    assert sd[f"{p}output_blocks.2.2.conv.weight"].shape == (960, 960, 3, 3)  # level 3 upsamples after its transformer
    assert sd[f"{p}output_blocks.11.0.skip_connection.weight"].shape == (192, 384, 1, 1)
    assert sd["cond_stage_model.embedding.weight"].shape == (1001, 512)
    assert sd["first_stage_model.quantize.embedding.weight"].shape == (8192, 3)
    assert sd["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"].shape == (128, 256, 1, 1)
    assert len(sd) == 894
    unet, vq = convert_ldm_state_dict(sd, CIN256_V2)
    n_unet = sum(v.numel() for k, v in sd.items() if k.startswith(p))
    assert 400e6 < n_unet < 402e6  # the "400M" LDM-4 ImageNet UNet
    with torch.device("meta"):
        assert set(unet) == set(UNet2DConditionModel(**ldm_unet_config(CIN256_V2)).state_dict())
        assert set(vq) == set(VQModel(**vq_model_config(CIN256_V2)).state_dict())


def test_specific_key_pairs():
    unet, vq = unet_key_plan(CIN256_V2), vq_key_plan(CIN256_V2)
    p, f = "model.diffusion_model.", "first_stage_model."
    pairs = {
        f"{p}time_embed.2.weight": ("copy", "time_embedding.linear_2.weight"),
        f"{p}input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight":
            ("copy", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
        f"{p}input_blocks.4.0.in_layers.2.weight": ("copy", "down_blocks.1.resnets.0.conv1.weight"),
        f"{p}input_blocks.6.0.op.bias": ("copy", "down_blocks.1.downsamplers.0.conv.bias"),
        f"{p}middle_block.2.emb_layers.1.weight": ("copy", "mid_block.resnets.1.time_emb_proj.weight"),
        f"{p}output_blocks.2.2.conv.weight": ("copy", "up_blocks.0.upsamplers.0.conv.weight"),
        f"{p}output_blocks.11.0.skip_connection.weight": ("copy", "up_blocks.3.resnets.2.conv_shortcut.weight"),
        f"{p}out.2.weight": ("copy", "conv_out.weight"),
        "cond_stage_model.embedding.weight": ("transpose", "encoder_hid_proj.weight"),
    }
    vq_pairs = {
        f"{f}encoder.down.1.downsample.conv.weight": ("copy", "encoder.down_blocks.1.downsamplers.0.conv.weight"),
        f"{f}encoder.mid.attn_1.q.weight": ("squeeze", "encoder.mid_block.attentions.0.to_q.weight"),
        f"{f}decoder.mid.attn_1.proj_out.bias": ("copy", "decoder.mid_block.attentions.0.to_out.0.bias"),
        f"{f}decoder.up.0.block.2.conv1.weight": ("copy", "decoder.up_blocks.2.resnets.2.conv1.weight"),
        f"{f}decoder.up.2.upsample.conv.weight": ("copy", "decoder.up_blocks.0.upsamplers.0.conv.weight"),
        f"{f}encoder.down.1.block.0.nin_shortcut.weight": ("copy", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
        f"{f}quantize.embedding.weight": ("copy", "quantize.embedding.weight"),
    }
    for plan, want in ((unet, pairs), (vq, vq_pairs)):
        for key, (kind, target) in want.items():
            assert (plan[key].kind, plan[key].target) == (kind, target), key


@CONFIGS
def test_every_key_used_once_and_every_parameter_filled(cfg):
    sd = checkpoint(cfg, betas=False)
    plan = unet_key_plan(cfg) | vq_key_plan(cfg)
    assert set(plan) == set(sd)  # every original key has exactly one rule ...
    unet, vq = convert_ldm_state_dict(sd, cfg)
    targets = [rule.target for rule in plan.values()]
    assert len(targets) == len(set(targets)) == len(unet) - 1 + len(vq)  # ... one target each; plus the zero bias
    parts = convert_ldm_checkpoint(sd, cfg)
    for model, converted in ((parts.unet, unet), (parts.vqvae, vq)):
        state = model.state_dict()
        assert set(state) == set(converted)
        for key, value in state.items():
            assert torch.equal(value, converted[key]), key
    assert not parts.unet.encoder_hid_proj.bias.any()
    assert torch.equal(parts.unet.encoder_hid_proj.weight, sd["cond_stage_model.embedding.weight"].t())


# --------------------------------------------------------------------------- numerics


def test_class_context_gives_the_class_embedding():
    ref = reference(TINY)
    parts = convert_ldm_checkpoint(ref.state_dict(), TINY)
    y = torch.tensor([4, 0, 2])
    ctx = class_context(y, TINY.n_classes)
    assert ctx.shape == (3, 1, TINY.n_classes) and ctx.sum().item() == 3
    with torch.no_grad():
        got = parts.unet.encoder_hid_proj(ctx)
        assert torch.equal(got, ref.cond_stage_model(y))  # exact: one nonzero product per output
        # A soft label is the same mixture of embedding rows.
        mix = 0.25 * ctx[0] + 0.75 * ctx[1]
        want = 0.25 * ref.cond_stage_model.embedding.weight[4] + 0.75 * ref.cond_stage_model.embedding.weight[0]
        torch.testing.assert_close(parts.unet.encoder_hid_proj(mix)[0], want)
    with pytest.raises(ValueError, match="in \\[0, 5\\)"):
        class_context([5], TINY.n_classes)


@CONFIGS
def test_unet_matches_reference(cfg):
    ref = reference(cfg)
    parts = convert_ldm_checkpoint(ref.state_dict(), cfg)
    x, t, y, _ = _inputs(cfg)
    with torch.no_grad():
        want = ref.eps(x, t, y)
        got = parts.unet(x, t, encoder_hidden_states=class_context(y, cfg.n_classes)).sample
        other = parts.unet(x, t, encoder_hidden_states=class_context(y.roll(1), cfg.n_classes)).sample
    assert got.shape == want.shape == x.shape
    assert want.abs().mean() > 0.1  # a real signal, not a zero net
    assert (got - want).abs().max().item() < 1e-4
    assert (other - want).abs().max().item() > 1e-2  # the class label matters: the check has teeth


@CONFIGS
def test_vq_autoencoder_matches_reference(cfg):
    ref = reference(cfg).first_stage_model
    parts = convert_ldm_checkpoint(checkpoint(cfg), cfg)
    _, _, _, img = _inputs(cfg)
    with torch.no_grad():
        h_want = ref.encode(img)
        h = parts.vqvae.encode(img).latents
        zq_want, idx_want = ref.quantize(h_want)
        zq, _, (_, _, idx) = parts.vqvae.quantize(h_want)
        dec_want = ref.decode(h_want)
        dec = parts.vqvae.decode(h_want).sample
    factor = 2 ** (len(cfg.first_stage.ch_mult) - 1)
    assert h.shape == (2, cfg.first_stage.embed_dim, cfg.first_stage.resolution // factor, cfg.first_stage.resolution // factor)
    assert (h - h_want).abs().max().item() < 1e-4
    assert torch.equal(idx.flatten(), idx_want) and idx_want.unique().numel() > 1  # the same codes, not one
    assert (zq - zq_want).abs().max().item() < 1e-6
    assert dec.shape == img.shape and dec_want.abs().mean() > 0.1
    assert (dec - dec_want).abs().max().item() < 1e-4


def test_scheduler_is_ldm_schedule_and_ddim_sampler():
    parts = convert_ldm_checkpoint(checkpoint(TINY), TINY)
    s = parts.scheduler
    assert isinstance(s, DDIMScheduler) and s.config.prediction_type == "epsilon"
    # LDM's make_beta_schedule("linear"): linspace of square roots, squared (float64 there, float32 in diffusers).
    betas = torch.linspace(TINY.linear_start**0.5, TINY.linear_end**0.5, TINY.timesteps, dtype=torch.float64) ** 2
    torch.testing.assert_close(s.betas.double(), betas, atol=1e-7, rtol=0)
    # LDM's DDIM (make_ddim_timesteps 'uniform'): range(0, T, T // S) + 1, last step to alphas_cumprod[0].
    s.set_timesteps(50)
    assert s.timesteps.flip(0).tolist() == [t + 1 for t in range(0, TINY.timesteps, TINY.timesteps // 50)]
    assert s.final_alpha_cumprod == s.alphas_cumprod[0]


# --------------------------------------------------------------------------- the pipeline folder


def test_saved_folder_loads_offline_with_diffusion_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = reference(TINY_DEEP)
    parts = convert_ldm_checkpoint(ref.state_dict(), TINY_DEEP)
    out = tmp_path / "models" / "tiny_ldm"
    save_ldm_pipeline(parts, out)
    assert sorted(p.name for p in out.iterdir()) == ["model_index.json", "scheduler", "unet", "vqvae"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny_ldm"]  # no temporary folder left behind
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "LDMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vqvae"] == ["diffusers", "VQModel"]

    pipe = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vqvae, VQModel)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.steps_offset == 1
    x, t, y, img = _inputs(TINY_DEEP)
    with torch.no_grad():
        eps = pipe.unet(x, t, encoder_hidden_states=class_context(y, TINY_DEEP.n_classes)).sample
        assert (eps - ref.eps(x, t, y)).abs().max().item() < 1e-4
        h = ref.first_stage_model.encode(img)
        assert (pipe.vqvae.decode(h).sample - ref.first_stage_model.decode(h)).abs().max().item() < 1e-4


def test_the_converted_folder_trains_as_the_project_s_class_conditional_latent_model(tmp_path):
    """load_unet reads the converted folder as a latent model whose class is its context: a bound
    label gives the original's eps for that class; the class embedder's (absent) bias stays frozen."""
    from diffusion_transfer.core.models.class_labels import null_label, set_class_label
    from diffusion_transfer.core.models.folder_check import unsupported_parts, unet_folder_problems
    from diffusion_transfer.core.models.latent import latent_codec_of
    from diffusion_transfer.core.models.unet import load_unet

    ref = reference(TINY_DEEP)
    out = tmp_path / "tiny_ldm"
    save_ldm_pipeline(convert_ldm_checkpoint(ref.state_dict(), TINY_DEEP), out)
    assert unsupported_parts(out) == [] and unet_folder_problems(out) == []
    model = load_unet(out)
    assert latent_codec_of(model).kind == "VQModel" and null_label(model) == TINY_DEEP.n_classes - 1
    assert not model.encoder_hid_proj.bias.requires_grad and model.encoder_hid_proj.weight.requires_grad
    x, t, _, _ = _inputs(TINY_DEEP)
    set_class_label(model, 2)
    with torch.no_grad():
        assert (model(x, t).sample - ref.eps(x, t, torch.full((4,), 2))).abs().max().item() < 1e-4
