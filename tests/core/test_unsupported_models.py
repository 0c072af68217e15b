"""Model kinds the project does not train yet are named, not trained wrongly.

Folders saved by diffusers itself: a cross-attention UNet in the Stable
Diffusion layout (refused), and the kinds the project supports: the
``DDPMPipeline``, an ``LDMPipeline`` (a VQ autoencoder, a UNet over its
latents) and a class-conditional UNet (tests/core/test_latent_models.py)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, LDMPipeline, UNet2DConditionModel, UNet2DModel, VQModel

from diffusion_transfer.core.models.folder_check import unsupported_parts

UNET = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=4)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    DDPMPipeline(unet=UNet2DModel(**UNET), scheduler=DDPMScheduler()).save_pretrained(root / "ddpm")
    vqvae = VQModel(in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8,), norm_num_groups=4,
                    num_vq_embeddings=16, vq_embed_dim=3, down_block_types=("DownEncoderBlock2D",),
                    up_block_types=("UpDecoderBlock2D",))
    LDMPipeline(vqvae=vqvae, unet=UNet2DModel(**UNET), scheduler=DDIMScheduler()).save_pretrained(root / "ldm")
    UNet2DModel(**UNET, num_class_embeds=4).save_pretrained(root / "class_unet")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                         attention_head_dim=2, norm_num_groups=4).save_pretrained(root / "sd" / "unet")
    (root / "sd" / "vae").mkdir()  # a Stable Diffusion layout without model_index.json: found by its folders
    return root


def test_a_pixel_space_ddpm_pipeline_has_no_unsupported_part(folders):
    assert unsupported_parts(folders / "ddpm") == []
    assert unsupported_parts(folders / "ddpm" / "unet") == []


def test_a_latent_pipeline_and_a_class_conditional_unet_are_supported(folders):
    index = json.loads((folders / "ldm" / "model_index.json").read_text())
    assert index["vqvae"] == ["diffusers", "VQModel"]  # what diffusers wrote
    assert unsupported_parts(folders / "ldm") == []
    assert unsupported_parts(folders / "class_unet") == []


def test_a_text_conditional_layout_names_its_text_encoder_and_the_unet(folders):
    (folders / "sd" / "text_encoder").mkdir(exist_ok=True)
    problems = unsupported_parts(folders / "sd")
    assert problems[0] == "it has a text encoder (text_encoder/)"
    assert any("UNet2DConditionModel" in p for p in problems) and any("cross_attention_dim 8" in p for p in problems)


def test_a_whole_stable_diffusion_folder_is_a_supported_text_to_image_model(tmp_path):
    """Issue 34: text_encoder/ and tokenizer/ beside a cross-attention UNet and vae/ are used, not refused."""
    from diffusion_transfer.core.models.folder_check import is_text_to_image_model, unet_folder_problems
    from tests.core._sd_helpers import tiny_sd_folder

    folder = tiny_sd_folder(tmp_path / "sd", tmp_path)
    assert is_text_to_image_model(folder)
    assert unsupported_parts(folder) == [] and unet_folder_problems(folder) == []
