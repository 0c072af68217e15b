"""DreamBooth's prior preservation (issue 34), re-derived the way diffusers'
``train_dreambooth_lora.py`` computes it: one forward on the instance and
class halves, ``F.mse_loss`` on each, ``loss + prior_loss_weight * prior_loss``,
with the noisy inputs made by diffusers' own ``DDPMScheduler.add_noise``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.methods.dreambooth import CLASS_IMAGE_DEFAULTS, class_image_settings
from diffusion_transfer.core.models import load_unet
from diffusion_transfer.core.models.text_to_image import text_conditioning_of
from diffusion_transfer.core.schedule import make_schedule
from tests.core._sd_helpers import tiny_sd_folder


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("sd")
    return load_unet(tiny_sd_folder(scratch / "sd", scratch))


def _schedule():
    return make_schedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)


def test_the_prior_loss_is_the_released_scripts_two_halves(source):
    from diffusers import DDPMScheduler

    text = text_conditioning_of(source)
    images = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    class_images = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    captions, class_prompt = text.encode(["a photo of a cat", "a red cat"]), text.encode(["a photo of a dog"])
    loss = build_method("dreambooth", {"prior_loss_weight": 0.7, "class_prompt": "a photo of a dog"},
                        _schedule()).with_class_examples(class_images, class_prompt).loss_fn
    with torch.no_grad():
        out = loss(source, images, generator=torch.Generator().manual_seed(5), condition=captions)

    # the same draws, in the loss's order: class examples, timesteps, noise
    gen = torch.Generator().manual_seed(5)
    pick = torch.randint(5, (2,), generator=gen)
    x0 = torch.cat([images, class_images[pick]])
    t = torch.randint(0, 1000, (4,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    ddpm = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    context = torch.cat([captions, class_prompt.expand(2, -1, -1)])
    with torch.no_grad():
        pred = source(ddpm.add_noise(x0, noise, t), t, encoder_hidden_states=context).sample
    pred, pred_prior = torch.chunk(pred, 2, dim=0)
    target, target_prior = torch.chunk(noise, 2, dim=0)
    instance, prior = F.mse_loss(pred, target), F.mse_loss(pred_prior, target_prior)
    torch.testing.assert_close(out["diffusion"], instance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["prior"], prior, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], instance + 0.7 * prior, rtol=1e-5, atol=1e-6)


def test_the_class_examples_change_only_the_prior_term(source):
    text = text_conditioning_of(source)
    images = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    captions, class_prompt = text.encode(["a photo of a cat"] * 2), text.encode(["a photo of a dog"])
    method = build_method("dreambooth", {}, _schedule())
    outs = []
    for seed in (1, 2):
        examples = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            outs.append(method.with_class_examples(examples, class_prompt).loss_fn(
                source, images, generator=torch.Generator().manual_seed(9), condition=captions))
    assert torch.equal(outs[0]["diffusion"], outs[1]["diffusion"])
    assert not torch.equal(outs[0]["prior"], outs[1]["prior"])
    with pytest.raises(ValueError, match="class examples"):
        method.loss_fn(source, images, condition=captions)  # never bound: no silent instance-only loss


def test_the_class_image_settings_are_checked_before_compute():
    settings = class_image_settings("a photo of dog", 3, {"steps": 2})
    assert settings.steps == 2 and settings.guidance_scale == CLASS_IMAGE_DEFAULTS["guidance_scale"]
    for bad, match in (({"class_prompt": " "}, "class_prompt"), ({"num_class_images": 0}, "num_class_images"),
                       ({"class_images": {"step": 3}}, "class_images takes"),
                       ({"class_images": {"guidance_scale": -1}}, "guidance_scale"),
                       ({"prior_loss_weight": -1.0}, "prior_loss_weight")):
        with pytest.raises(ValueError, match=match):
            build_method("dreambooth", bad, _schedule())
