"""improved-diffusion (openai/improved-diffusion) and class-conditional ADM
checkpoints -> diffusers ``UNet2DModel``: the ``improved_imagenet64`` preset
(the ImageNet 64x64 model A3FT fine-tunes), its scheduler config, the key
mapping (``label_emb`` included) and the outputs.

References here are ``RefADMUNet`` (tests/core/_adm_reference.py), an
independent re-implementation with the original's module tree and maths. How
it was checked against the original code, once, outside the suite: the
converter was run on state dicts of openai/improved-diffusion's own
``UNetModel`` (commit 1bc7bbbdc414d83d4abf2ad8cc1446dc36c4e4d5, ``unet.py`` /
``nn.py`` / ``fp16_util.py`` / ``gaussian_diffusion.py`` extracted unchanged)
and guided-diffusion's (commit 22e0df8183507e13a7813f8d38d51b072ca1e67c), with
every weight random and non-zero, inputs x ~ N(0, 1) of 6 images and t in {0,
1, 17, 999, 2500, T-1} (fed to the original as ``t * 1000 / T`` where
``rescale_timesteps``). Max abs difference of the outputs (float32, outputs of
mean magnitude ~0.45-0.5):

* improved, imagenet64 structure at width 32 / 16x16 (channel_mult 1,2,3,4,
  3 ResBlocks, attention at ds 4 and 8, 4 heads of 24 and 32 channels, learned
  sigma, scale-shift, T=4000 rescaled): 2.6e-6;
* improved, unconditional eps-only (1,2,3; 2 ResBlocks; 2 heads; additive
  time embedding; T=1000): 2.9e-6;
* improved, class-conditional (7 classes), learned sigma, 2 heads down / 4 up,
  T=4000 rescaled: 4.6e-6; class-conditional, imagenet64 structure, no rescale
  (as imagenet64_cond): 2.7e-6;
* guided-diffusion, class-conditional P2-like (num_head_channels 16,
  resblock_updown): 2.7e-6; guided-diffusion with the improved options: 2.0e-6.

The same numbers held after ``save_unet`` / ``load_unet`` plus
``apply_attention_heads``; without the latter the varying-head models differed
by 0.16-0.72. ``get_named_beta_schedule("cosine", T)`` (T = 4000, 1000, 50)
equalled the betas of the written scheduler config exactly; the linear
schedule to 6e-17.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import UNet2DModel

from diffusion_transfer.core.models.adm import (
    FFHQ_P2,
    IMPROVED_IMAGENET64,
    PRESETS,
    ADMCheckpointError,
    adm_scheduler_config,
    adm_unet_config,
    apply_attention_heads,
    convert_adm_checkpoint,
    convert_adm_state_dict,
)
from diffusion_transfer.core.models.adm_cli import main as cli_main
from diffusion_transfer.core.models.scheduler_config import scheduler_config_of
from diffusion_transfer.core.models.unet import load_unet
from diffusion_transfer.core.parameterization import schedule_from_scheduler_config
from diffusion_transfer.pipelines.convert.nodes import convert_source
from diffusion_transfer.project.schema import ConvertParams
from tests.core._adm_reference import (
    TINY,
    TINY_IMPROVED,
    TINY_IMPROVED_COND,
    TINY_IMPROVED_EPS,
    RefADMUNet,
    _inputs,
    labels,
    net_timesteps,
    reference,
    timestep_embedding,
    variant,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py

TINIES = [TINY_IMPROVED, TINY_IMPROVED_COND, TINY_IMPROVED_EPS]
IDS = ["imagenet64_structure", "class_cond", "eps"]


def _want_got(cfg, model=None, ref=None, y=None):
    ref = ref if ref is not None else reference(cfg)
    model = model if model is not None else convert_adm_checkpoint(ref.state_dict(), cfg)
    x, t = _inputs(cfg)
    y = y if y is not None else (labels(cfg) if cfg.class_cond else None)
    with torch.no_grad():
        return ref(x, net_timesteps(t, cfg), y), model(x, t, class_labels=y).sample


# --------------------------------------------------------------------------- preset and key layout


def test_improved_imagenet64_preset_is_the_readme_model():
    cfg = PRESETS["improved_imagenet64"]
    assert cfg is IMPROVED_IMAGENET64
    unet = adm_unet_config(cfg)
    assert unet["block_out_channels"] == (128, 256, 384, 512) and unet["layers_per_block"] == 3
    # "16,8" at 64x64: attention at 16x16 and 8x8 (levels 2 and 3), conv resamplers elsewhere.
    assert unet["down_block_types"] == ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    assert unet["up_block_types"] == ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    assert unet["out_channels"] == 6 and unet["num_class_embeds"] is None
    assert (unet["time_embedding_type"], unet["num_train_timesteps"]) == ("learned", 4000)
    # 4 heads everywhere: 128-wide at 512 channels (diffusers' own count), 96-wide at 384 (recorded).
    assert unet["attention_head_dim"] == 128
    heads = cfg.attention_heads()
    assert heads == {**{f"down_blocks.2.attentions.{j}": 4 for j in range(3)},
                     **{f"up_blocks.1.attentions.{j}": 4 for j in range(4)}}
    assert adm_unet_config(PRESETS["improved_imagenet64_cond"])["num_class_embeds"] == 1000


def test_improved_imagenet64_key_layout_shapes_only():
    with torch.device("meta"):
        adm_sd = RefADMUNet(IMPROVED_IMAGENET64).state_dict()
    # improved-diffusion's layout: input block 12 is the 3rd Downsample (a conv), attention in
    # input blocks 9-11 and 13-15 (4 heads, legacy qkv), output block 3 upsamples after its attention.
    assert adm_sd["input_blocks.12.0.op.weight"].shape == (384, 384, 3, 3)
    assert adm_sd["input_blocks.9.1.qkv.weight"].shape == (1152, 384, 1)
    assert adm_sd["output_blocks.3.2.conv.weight"].shape == (512, 512, 3, 3)
    assert "input_blocks.8.1.qkv.weight" not in adm_sd and len(adm_sd) == 450
    converted = convert_adm_state_dict(adm_sd, IMPROVED_IMAGENET64)
    assert converted["down_blocks.2.attentions.0.to_q.weight"].shape == (384, 384)
    assert converted["down_blocks.2.downsamplers.0.conv.weight"].shape == (384, 384, 3, 3)
    with torch.device("meta"):
        target = UNet2DModel(**adm_unet_config(IMPROVED_IMAGENET64)).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in target.items()}
    n_adm = sum(v.numel() for v in adm_sd.values())
    assert 120_000_000 < n_adm < 122_000_000  # A3FT app. C: "~120M parameters"
    assert sum(v.numel() for v in converted.values()) == n_adm + 4000 * 128  # + the timestep table


def test_label_emb_becomes_class_embedding():
    ref = reference(TINY_IMPROVED_COND)
    sd = ref.state_dict()
    converted = convert_adm_state_dict(sd, TINY_IMPROVED_COND)
    assert converted["class_embedding.weight"] is sd["label_emb.weight"]
    model = convert_adm_checkpoint(sd, TINY_IMPROVED_COND)
    assert model.config.num_class_embeds == 7 and model.config.class_embed_type is None
    assert torch.equal(model.class_embedding.weight, sd["label_emb.weight"])
    # A class-conditional checkpoint for an unconditional config says which flags fit it.
    with pytest.raises(ADMCheckpointError) as info:
        convert_adm_checkpoint(sd, TINY_IMPROVED_COND.model_copy(update={"class_cond": False}))
    assert "label_emb.weight" in str(info.value) and "--class-cond true --num-classes 7" in str(info.value)


def test_rescaled_timesteps_are_a_table_of_adm_embeddings():
    model = convert_adm_checkpoint(reference(TINY_IMPROVED).state_dict(), TINY_IMPROVED)
    t = torch.tensor([0, 1, 2, 1999, 3999])
    table = model.time_proj.weight[t]
    torch.testing.assert_close(table, timestep_embedding(t.float() * 0.25, 32), atol=1e-6, rtol=0)
    assert (table - timestep_embedding(t, 32)).abs().max() > 0.1  # the unscaled embedding is another


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("cfg", TINIES, ids=IDS)
def test_whole_model_matches_reference(cfg):
    want, got = _want_got(cfg)
    assert got.shape == want.shape == (4, 6 if cfg.learn_sigma else 3, 16, 16)
    assert want.abs().mean() > 0.1
    assert (got - want).abs().max().item() < 1e-4


def test_class_labels_are_added_like_label_emb():
    cfg = TINY_IMPROVED_COND
    ref = reference(cfg)
    model = convert_adm_checkpoint(ref.state_dict(), cfg)
    y = labels(cfg)
    want, got = _want_got(cfg, model, ref, y)
    other_want, other_got = _want_got(cfg, model, ref, (y + 1) % cfg.num_classes)
    assert (got - want).abs().max() < 1e-4 and (other_got - other_want).abs().max() < 1e-4
    assert (other_want - want).abs().max() > 1e-2  # the label matters


def test_varying_head_widths_need_the_recorded_heads():
    cfg = TINY_IMPROVED
    ref = reference(cfg)
    model = convert_adm_checkpoint(ref.state_dict(), cfg)
    assert model.down_blocks[2].attentions[0].heads == 4 and model.up_blocks[1].attentions[3].heads == 4
    plain = UNet2DModel(**adm_unet_config(cfg))  # diffusers' own head counts: 96 // 32 = 3 at level 2
    plain.load_state_dict(model.state_dict())
    want, got = _want_got(cfg, model, ref)
    _, got_plain = _want_got(cfg, plain.eval(), ref)
    assert (got - want).abs().max() < 1e-4
    assert (got_plain - want).abs().max() > 1e-2
    apply_attention_heads(plain, model.config["_adm_attention_heads"])
    assert (_want_got(cfg, plain, ref)[1] - want).abs().max() < 1e-4


def test_apply_attention_heads_names_a_layer_that_does_not_fit():
    model = convert_adm_checkpoint(reference(TINY).state_dict(), TINY)
    with pytest.raises(ValueError, match="down_blocks.1.attentions.0.*3 heads"):
        apply_attention_heads(model, {"down_blocks.1.attentions.0": 3})  # 64 channels
    with pytest.raises(ValueError, match="down_blocks.0.attentions.0"):
        apply_attention_heads(model, {"down_blocks.0.attentions.0": 2})  # level 0 does not attend
    assert "_adm_attention_heads" not in model.config  # one head width: nothing recorded


# --------------------------------------------------------------------------- schedule


def _improved_cosine_betas(steps: int) -> list[float]:
    # improved-diffusion gaussian_diffusion.py, written out: alpha_bar(t) = cos((t + 0.008) / 1.008 * pi/2)^2,
    # beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999).
    def alpha_bar(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)]


def test_scheduler_config_gives_improved_diffusions_cosine_betas():
    config = adm_scheduler_config(IMPROVED_IMAGENET64)
    assert config["beta_schedule"] == "squaredcos_cap_v2" and config["num_train_timesteps"] == 4000
    assert config["variance_type"] == "learned_range" and config["prediction_type"] == "epsilon"
    betas = schedule_from_scheduler_config(config).betas
    want = torch.tensor(_improved_cosine_betas(4000), dtype=torch.float64)
    torch.testing.assert_close(betas, want, atol=1e-15, rtol=0)
    assert betas[-1].item() == 0.999 and betas[0].item() < 1e-5


def test_scheduler_config_of_linear_schedules():
    assert adm_scheduler_config(FFHQ_P2) is None  # DDPM linear, T=1000: what no config means
    cfg = variant(diffusion_steps=4000, learn_sigma=False)
    config = adm_scheduler_config(cfg)
    assert "variance_type" not in config
    # get_named_beta_schedule("linear", T): np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    want = torch.linspace(0.0001 / 4, 0.02 / 4, 4000, dtype=torch.float64)
    torch.testing.assert_close(schedule_from_scheduler_config(config).betas, want, atol=1e-15, rtol=0)


# --------------------------------------------------------------------------- the command


def test_cli_writes_the_improved_imagenet64_folder(tmp_path, capsys):
    ref = reference(TINY_IMPROVED)
    ckpt = tmp_path / "imagenet64_tiny.pt"
    torch.save(ref.state_dict(), ckpt)
    out = tmp_path / "improved_diffusers"
    argv = [str(ckpt), str(out), "--preset", "improved_imagenet64", "--image-size", "16", "--num-channels", "32",
            "--attention-resolutions", "4,2"]
    assert cli_main(argv) == 0
    assert "squaredcos_cap_v2, T=4000" in capsys.readouterr().out
    written = json.loads((out / "scheduler_config.json").read_text())
    assert written == adm_scheduler_config(TINY_IMPROVED)
    assert json.loads((out / "config.json").read_text())["_adm_attention_heads"] == TINY_IMPROVED.attention_heads()

    model = apply_attention_heads(load_unet(out))
    want, got = _want_got(TINY_IMPROVED, model, ref)
    assert (got - want).abs().max() < 1e-4
    betas = schedule_from_scheduler_config(model.scheduler_config).betas
    torch.testing.assert_close(betas, torch.tensor(_improved_cosine_betas(4000), dtype=torch.float64),
                               atol=1e-15, rtol=0)


def test_convert_source_node_attaches_the_schedule(tmp_path):
    """``kedro run --pipeline=convert_source``: the model it saves carries the scheduler config."""
    ckpt = tmp_path / "imagenet64_tiny.pt"
    torch.save(reference(TINY_IMPROVED).state_dict(), ckpt)
    overrides = {"image_size": 16, "num_channels": 32, "attention_resolutions": [4, 2]}
    model = convert_source(ConvertParams(checkpoint=str(ckpt), preset="improved_imagenet64", overrides=overrides))
    assert scheduler_config_of(model) == adm_scheduler_config(TINY_IMPROVED)
    assert model.config["_adm_attention_heads"] == TINY_IMPROVED.attention_heads()


def test_the_rescaled_timestep_table_is_frozen_after_conversion_and_after_loading(tmp_path):
    """improved-diffusion computes the table (a sinusoid at t * 1000 / T); fine-tuning every
    parameter (naive, SDFT) must leave it as the original code would."""
    from diffusion_transfer.core.models.unet import save_unet

    model = convert_adm_checkpoint(reference(TINY_IMPROVED).state_dict(), TINY_IMPROVED)
    assert not model.time_proj.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "time_proj.weight")
    again = load_unet(save_unet(model, tmp_path / "m"))
    assert not again.time_proj.weight.requires_grad
