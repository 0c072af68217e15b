"""Latent and class-conditional source models (issue 31), on folders diffusers saved itself.

Each formula is re-derived from diffusers' own calls: a VQ latent is
``scaling_factor * VQModel.encode(x).latents`` and an image
``VQModel.decode(z / scaling_factor)`` (what ``LDMPipeline`` does); the bound
class label gives ``unet(x, t, class_labels=label)``; classifier-free guidance
is ``eps_null + s * (eps_label - eps_null)``."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, LDMPipeline, UNet2DModel, VQModel

from diffusion_transfer.core.models.class_labels import (
    guided_eps,
    label_index,
    null_label,
    set_class_label,
    using_class_label,
)
from diffusion_transfer.core.models.folder_check import unsupported_parts
from diffusion_transfer.core.models.latent import latent_codec_of, pixel_size
from diffusion_transfer.core.models.pipeline_folder import loading_line
from diffusion_transfer.core.models.unet import build_unet, load_unet, save_unet

UNET = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=4)


def _vqvae() -> VQModel:
    return VQModel(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                   up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=3,
                   num_vq_embeddings=16, vq_embed_dim=3, layers_per_block=1, scaling_factor=0.5)


@pytest.fixture(scope="module")
def ldm_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm")
    torch.manual_seed(0)
    LDMPipeline(vqvae=_vqvae(), unet=UNet2DModel(**UNET, num_class_embeds=4),
                scheduler=DDIMScheduler()).save_pretrained(root / "ldm")
    return root / "ldm"


def test_a_latent_pipeline_loads_with_its_frozen_autoencoder(ldm_folder):
    model = load_unet(ldm_folder)
    codec = latent_codec_of(model)
    assert codec is not None and codec.kind == "VQModel" and codec.part == "vqvae"
    assert codec.scaling_factor == 0.5 and pixel_size(model) == 16  # 8 latent px x 2 (two encoder blocks)
    assert not any(p.requires_grad for p in codec.autoencoder.parameters())
    assert not any(k.startswith(("encoder", "decoder", "quantize")) for k in model.state_dict())  # not trained
    assert codec.describe(8) == f"latent: VQModel (vqvae/ of {ldm_folder}), 3x8x8, scaled by 0.5"


def test_encode_and_decode_are_the_autoencoders_own_scaled_calls(ldm_folder):
    codec = latent_codec_of(load_unet(ldm_folder))
    vq = VQModel.from_pretrained(ldm_folder / "vqvae")
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    z = codec.encode(x, batch_size=2)  # two batches
    with torch.no_grad():
        assert torch.allclose(z, vq.encode(x).latents * 0.5, atol=1e-6)
        expected = vq.decode(z / 0.5).sample.clamp(-1, 1)  # decode quantises, as LDMPipeline does
        assert torch.allclose(codec.decode(z), expected, atol=1e-6)
    assert codec.encode(x[:0]).shape == (0, 3, 8, 8)


def test_copies_share_the_autoencoder_and_keep_the_label(ldm_folder):
    model = load_unet(ldm_folder)
    set_class_label(model, 2)
    twin = copy.deepcopy(model)
    assert latent_codec_of(twin) is latent_codec_of(model)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.equal(twin(x, t).sample, model(x, t, class_labels=torch.tensor([2, 2])).sample)


def test_the_bound_label_is_passed_and_an_explicit_one_wins(ldm_folder):
    model = load_unet(ldm_folder)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 900])
    with pytest.raises(ValueError, match="no class label bound: set the dataset's or the source's class_label"):
        model(x, t)
    set_class_label(model, 1)
    with torch.no_grad():
        bound = model(x, t).sample
        assert torch.equal(bound, model(x, t, class_labels=torch.tensor([1, 1])).sample)
        assert not torch.equal(bound, model(x, t, class_labels=torch.tensor([0, 0])).sample)
        with using_class_label(model, 3):
            assert torch.equal(model(x, t).sample, model(x, t, class_labels=torch.tensor([3, 3])).sample)
        assert torch.equal(model(x, t).sample, bound)  # restored after the block


def test_labels_are_checked_against_the_model(ldm_folder):
    model = load_unet(ldm_folder)
    assert label_index(model, "unconditional", "datasets.d.class_label") == 3 == null_label(model)
    assert label_index(model, 2, "x") == 2
    with pytest.raises(ValueError, match=r"datasets.d.class_label is 4: the model has 4 class embeddings \(0..3"):
        label_index(model, 4, "datasets.d.class_label")
    with pytest.raises(ValueError, match="has no class embedding"):
        label_index(UNet2DModel(**UNET), 0, "sources.s.class_label")


def test_classifier_free_guidance_mixes_the_label_and_the_null_label(ldm_folder):
    model = load_unet(ldm_folder)
    set_class_label(model, 1)

    def eps_fn(x, t):
        with torch.no_grad():
            return model(x, t).sample

    x, t = torch.randn(2, 3, 8, 8), torch.tensor([100, 200])
    with torch.no_grad():
        cond = model(x, t, class_labels=torch.tensor([1, 1])).sample
        null = model(x, t, class_labels=torch.tensor([3, 3])).sample
    assert torch.allclose(guided_eps(eps_fn, model, 3.0)(x, t), null + 3.0 * (cond - null), atol=1e-5)
    assert guided_eps(eps_fn, model, 1.0) is eps_fn


def test_a_pipeline_folder_in_gives_a_pipeline_folder_out_that_diffusers_loads(ldm_folder, tmp_path):
    model = load_unet(ldm_folder)
    set_class_label(model, 2)
    with torch.no_grad():
        model.conv_in.weight.add_(0.25)  # "fine-tuned"
    out = save_unet(model, tmp_path / "out")
    index = json.loads((out / "model_index.json").read_text())
    assert {k: v for k, v in index.items() if not k.startswith("_")} == {
        "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"],
        "vqvae": ["diffusers", "VQModel"]}
    assert json.loads((out / "class_label.json").read_text()) == {"class_label": 2, "null_label": 3}
    pipe = DiffusionPipeline.from_pretrained(str(out))
    assert isinstance(pipe, LDMPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    assert torch.equal(pipe.unet.conv_in.weight, model.conv_in.weight)
    assert loading_line(model, out) == f'from diffusers import DiffusionPipeline; DiffusionPipeline.from_pretrained("{out}")'
    again = load_unet(out)  # and back: the autoencoder and the label come with it
    assert latent_codec_of(again) is not None and again.class_label == 2


def test_a_bare_unet_folder_stays_a_bare_unet_folder(tmp_path):
    torch.manual_seed(0)
    UNet2DModel(**UNET).save_pretrained(tmp_path / "bare")
    out = save_unet(load_unet(tmp_path / "bare"), tmp_path / "out")
    assert (out / "config.json").is_file() and not (out / "model_index.json").exists()


def test_latent_channels_are_accepted_and_the_output_must_match(tmp_path):
    assert build_unet({**UNET, "in_channels": 4, "out_channels": 8}).config.in_channels == 4
    with pytest.raises(ValueError, match="'out_channels' must be 4 \\(eps\\) or 8"):
        build_unet({**UNET, "in_channels": 4, "out_channels": 3})


def test_supported_kinds_are_no_longer_refused_and_the_others_still_are(ldm_folder, tmp_path):
    assert unsupported_parts(ldm_folder) == []
    UNet2DModel(**UNET, class_embed_type="timestep").save_pretrained(tmp_path / "timestep")
    (problem,) = unsupported_parts(tmp_path / "timestep")
    assert "class embedding of type 'timestep'" in problem and "only a lookup table" in problem
    (tmp_path / "kl" / "vae").mkdir(parents=True)
    (tmp_path / "kl" / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny"}))
    assert unsupported_parts(tmp_path / "kl") == ["its autoencoder vae/ is a AutoencoderTiny, not a AutoencoderKL"]


def test_a_hub_id_of_a_latent_pipeline_loads_from_the_local_cache(ldm_folder, tmp_path, monkeypatch):
    """Offline, a Hub id is served by the local Hugging Face cache (its snapshot layout, written here)."""
    import shutil

    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-ldm"
    shutil.copytree(ldm_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_unet("someone/tiny-ldm")
    assert latent_codec_of(model).kind == "VQModel" and model.config.num_class_embeds == 4
    assert model.scheduler_config["_class_name"] == "DDIMScheduler"
    assert "model_index.json" in {p.name for p in (repo / "snapshots" / commit).iterdir()}


def test_a_kl_autoencoder_encodes_to_its_posterior_mean(tmp_path):
    """vae/ with an AutoencoderKL: the latent is the scaled posterior mean (docs/DEVIATIONS.md), decoded back."""
    from diffusers import AutoencoderKL, DDPMScheduler

    from diffusion_transfer.core.models.latent import load_latent_codec

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=4,
                        layers_per_block=1, scaling_factor=0.25)
    vae.save_pretrained(tmp_path / "kl" / "vae")
    UNet2DModel(**{**UNET, "in_channels": 4, "out_channels": 4}).save_pretrained(tmp_path / "kl" / "unet")
    DDPMScheduler().save_pretrained(tmp_path / "kl" / "scheduler")
    codec = load_latent_codec(tmp_path / "kl")
    assert codec.part == "vae" and codec.kind == "AutoencoderKL" and codec.latent_shape(16) == (4, 8, 8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        assert torch.allclose(codec.encode(x), mean * 0.25, atol=1e-6)
        assert torch.allclose(codec.decode(mean * 0.25), vae.decode(mean).sample.clamp(-1, 1), atol=1e-6)
    assert latent_codec_of(load_unet(tmp_path / "kl")).kind == "AutoencoderKL"
    # Saved back: no diffusers pipeline holds vae/ + an unconditional UNet, so no model_index.json
    # (a DDPMPipeline index would load and silently drop the autoencoder); the load line loads each part.
    model = load_unet(tmp_path / "kl")
    out = save_unet(model, tmp_path / "out")
    assert {p.name for p in out.iterdir()} >= {"unet", "vae", "scheduler"}
    assert not (out / "model_index.json").exists()
    line = loading_line(model, out)
    assert "DiffusionPipeline" not in line
    scope: dict = {}
    exec(line, scope)  # the report's line, as a user would paste it
    assert type(scope["vae"]).__name__ == "AutoencoderKL" and type(scope["unet"]).__name__ == "UNet2DModel"
    assert torch.equal(scope["vae"].decoder.conv_out.weight, vae.decoder.conv_out.weight)
    assert latent_codec_of(load_unet(out)).kind == "AutoencoderKL"  # and the project reads it back
    assert "_name_or_path" not in json.loads((out / "vae" / "config.json").read_text())  # no path of this machine
