"""Text-to-image source models in the Stable Diffusion layout (issue 34): a
tiny ``StableDiffusionPipeline`` folder loads with its text encoder, samples
as the pipeline does, fine-tunes with SDFT + LoRA on caption hidden states,
and comes back as a folder and a LoRA that diffusers' own loaders read."""

from __future__ import annotations

import pytest
import torch

from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.models import load_unet, save_unet
from diffusion_transfer.core.models.latent import latent_codec_of
from diffusion_transfer.core.models.lora import FrozenBaseView, LoraSpec, add_lora, merged_copy
from diffusion_transfer.core.models.lora_io import LORA_FOLDER
from diffusion_transfer.core.models.pipeline_folder import pipeline_index_of
from diffusion_transfer.core.models.scheduler_config import scheduler_config_of
from diffusion_transfer.core.models.text_to_image import text_conditioning_of
from diffusion_transfer.core.sampling.text_to_image import diffusers_scheduler, sample_text_to_image
from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.training import TrainConfig, train
from tests.core._sd_helpers import tiny_sd_folder

PROMPTS = ["a photo of a cat", "a red painting of a dog"]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("sd")
    return tiny_sd_folder(scratch / "sd", scratch)


def _pipe_images(pipe, latents, scale=3.0, steps=4):
    out = pipe(PROMPTS, negative_prompt=["blue"] * 2, latents=latents.clone(), guidance_scale=scale,
               num_inference_steps=steps, output_type="pt")
    return out.images.float()


def _ours(model, latents, scale=3.0, steps=4):
    text = text_conditioning_of(model)
    sched = diffusers_scheduler(scheduler_config_of(model), (pipeline_index_of(model) or {}).get("scheduler", [None])[-1])
    images = sample_text_to_image(model, sched, latents, text.encode(PROMPTS), text.encode(["blue"] * 2), scale, steps)
    return images * 0.5 + 0.5


def test_an_sd_folder_loads_with_its_text_encoder_and_samples_as_the_pipeline_does(sd_folder):
    from diffusers import StableDiffusionPipeline

    model = load_unet(sd_folder)
    assert type(model).__name__ == "UNet2DConditionModel" and latent_codec_of(model).part == "vae"
    assert text_conditioning_of(model).encode(PROMPTS).shape == (2, 12, 32)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    pipe = StableDiffusionPipeline.from_pretrained(str(sd_folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    torch.testing.assert_close(_ours(model, latents), _pipe_images(pipe, latents), atol=1e-4, rtol=1e-4)


def test_sdft_with_lora_on_captions_saves_a_pipeline_and_a_lora_diffusers_loads(sd_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    source = load_unet(sd_folder)
    text = text_conditioning_of(source)
    schedule = make_schedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)
    spec = build_method("sdft", {"lambda_aux": 1.0, "gamma_aux": 0.0, "gamma_distill": 0.0}, schedule)
    student = add_lora(source, LoraSpec(rank=2), seed=0)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    captions = text.encode(PROMPTS * 2)
    config = TrainConfig(steps=3, batch_size=2, lr=1e-2, log_every=1, ema_decay=0.0, ema_warmup="none")
    result = train(student, spec.loss_fn, latents, config, teacher=FrozenBaseView(student), conditions=captions,
                   progress=False, latents=True)
    assert {"diffusion", "distill", "aux"} <= set(result.history[-1])
    trained = merged_copy(result.model)
    folder = save_unet(trained, tmp_path / "model")
    assert (folder / LORA_FOLDER / "pytorch_lora_weights.safetensors").is_file()

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    tuned = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    with_lora = StableDiffusionPipeline.from_pretrained(str(sd_folder), local_files_only=True)
    with_lora.load_lora_weights(str(folder / LORA_FOLDER))
    plain = StableDiffusionPipeline.from_pretrained(str(sd_folder), local_files_only=True)
    for pipe in (tuned, with_lora, plain):
        pipe.set_progress_bar_config(disable=True)
    ours = _ours(trained, x)
    torch.testing.assert_close(_pipe_images(tuned, x), ours, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_pipe_images(with_lora, x), ours, atol=1e-4, rtol=1e-4)
    assert (_pipe_images(plain, x) - ours).abs().max() > 1e-4  # the LoRA changed something


def test_sdft_s_auxiliary_prompt_is_the_empty_prompt_by_default_or_the_captions(sd_folder):
    source = load_unet(sd_folder)
    text = text_conditioning_of(source)
    schedule = make_schedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)
    captions = text.encode(PROMPTS)
    losses = {}
    for prompt in ("empty", "caption"):
        loss = build_method("sdft", {"aux_prompt": prompt, "skip_distill_below": 0}, schedule).loss_fn
        cond = loss.aux_condition(source, captions, None, 2)
        expected = text.encode([""]).expand(2, -1, -1) if prompt == "empty" else captions
        torch.testing.assert_close(cond, expected)
        student = add_lora(load_unet(sd_folder), LoraSpec(rank=2), seed=0)
        with torch.no_grad():
            for p in student.parameters():
                if p.requires_grad:
                    p.add_(0.05)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        out = loss(student, x, FrozenBaseView(student), torch.Generator().manual_seed(4), condition=captions)
        losses[prompt] = out
    assert torch.equal(losses["empty"]["distill"], losses["caption"]["distill"])  # same draws, same captions
    assert not torch.equal(losses["empty"]["aux"], losses["caption"]["aux"])


def test_captions_come_from_metadata_jsonl_or_the_instance_prompt(tmp_path):
    import json

    from diffusion_transfer.core.data.captions import CaptionError, captions_for, read_captions

    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "a cat"}) + "\n")
    found = read_captions(tmp_path)
    assert captions_for(["a.png", "b.png"], found, "a photo", "datasets.d.images") == ["a cat", "a photo"]
    with pytest.raises(CaptionError, match="1 training image\\(s\\) have no caption \\(b.png\\)"):
        captions_for(["a.png", "b.png"], found, None, "datasets.d.images")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png"}\n')
    with pytest.raises(CaptionError, match="line 1 needs"):
        read_captions(tmp_path)
