"""DreamBooth's class images: ``num_class_images`` samples of the class
prompt from the source model, generated once and cached.

The released script (diffusers ``examples/dreambooth/train_dreambooth_lora.py``)
samples them with ``pipeline(class_prompt)`` (the pipeline's defaults: its
scheduler, 50 steps, guidance 7.5) into ``--class_data_dir`` and generates
only the images that folder lacks. Here they are sampled the same way
(core/sampling/text_to_image.py) from seeded noise, and cached under
``paths.checkpoints/class_images/`` by a digest of the source model's weights
and the settings: a second run, or another dataset with the same class,
reads them back. The cache is prefix-stable: more images of the same settings
extend the cached ones, fewer take the first ones (noise i is always the same).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from diffusion_transfer.core.data.images import to_uint8
from diffusion_transfer.core.io import atomic_path, tensor_digest
from diffusion_transfer.core.methods.dreambooth import ClassImageSettings, class_image_settings
from diffusion_transfer.core.methods.registry import CLASS_IMAGE_KEYS
from diffusion_transfer.core.models.text_to_image import text_conditioning_of
from diffusion_transfer.core.sampling import make_noise_bank
from diffusion_transfer.core.sampling.text_to_image import model_scheduler, sample_text_to_image
from diffusion_transfer.pipelines.model_space import model_input_shape
from diffusion_transfer.pipelines.utils import inference_setup
from diffusion_transfer.project.resolved import TrainingRuns
from diffusion_transfer.project.schema import DatasetParams, MethodParams

__all__ = ["class_images_of_run", "settings_of_run"]

CACHE_FOLDER = "class_images"


def settings_of_run(method: MethodParams, dataset: DatasetParams, runs: TrainingRuns) -> ClassImageSettings:
    """The run's class-image settings (``methods.dreambooth`` with the dataset's overrides)."""
    hyper = runs.of(method, dataset).hyperparameters
    return class_image_settings(**{k: hyper[k] for k in CLASS_IMAGE_KEYS if k in hyper})


def _cache_key(source_model, settings: ClassImageSettings) -> str:
    digest = hashlib.sha256(json.dumps({k: v for k, v in settings.record().items() if k != "num_class_images"},
                                       sort_keys=True).encode())
    digest.update(tensor_digest(source_model.state_dict().values()))  # the UNet; its folder fixes the rest
    return digest.hexdigest()[:16]


def _sample(source_model, settings: ClassImageSettings, start: int) -> torch.Tensor:
    """Class images ``start`` .. ``num_class_images - 1`` (uint8, N x H x W x 3)."""
    text = text_conditioning_of(source_model)
    noise = make_noise_bank(settings.num_class_images, model_input_shape(source_model), seed=settings.seed)[start:]
    scheduler = model_scheduler(source_model)
    device, _ = inference_setup()
    source_model.eval().to(device)
    prompt, negative = text.encode([settings.class_prompt]), text.encode([settings.negative_prompt])
    gen = torch.Generator().manual_seed(settings.seed + 1)
    out = []
    for i in range(0, len(noise), settings.batch_size):
        x = noise[i : i + settings.batch_size].to(device)
        b = len(x)
        images = sample_text_to_image(source_model, scheduler, x, prompt.expand(b, -1, -1),
                                      negative.expand(b, -1, -1), settings.guidance_scale, settings.steps, gen)
        out.append(torch.from_numpy(to_uint8(images.cpu())))
    return torch.cat(out) if out else torch.zeros((0, 1, 1, 3), dtype=torch.uint8)


def class_images_of_run(source_model, method: MethodParams, dataset: DatasetParams, runs: TrainingRuns,
                        checkpoint_root: str) -> dict:
    """DreamBooth's class images of the run, from the cache or sampled now
    (only those the cache lacks); ``{"images": uint8 (N, H, W, 3), "meta"}``."""
    settings = settings_of_run(method, dataset, runs)
    if settings.class_prompt is None or text_conditioning_of(source_model) is None:
        raise ValueError(f"methods.{method.name}.class_prompt (or datasets.{dataset.name}.method_overrides."
                         f"{method.name}.class_prompt): DreamBooth samples its class images from a text-to-image "
                         "source model with a class prompt; set it, e.g. 'a photo of dog'")
    from safetensors.torch import load_file, save_file  # deferred: only DreamBooth runs read or write the cache

    key = _cache_key(source_model, settings)
    path = Path(checkpoint_root) / CACHE_FOLDER / f"{key}.safetensors"
    cached = load_file(str(path))["images"] if path.is_file() else torch.zeros((0,), dtype=torch.uint8)
    n = settings.num_class_images
    if len(cached) >= n:
        images, made = cached[:n], 0
    else:
        new = _sample(source_model, settings, len(cached))
        images, made = (torch.cat([cached, new]) if len(cached) else new), len(new)
        with atomic_path(path) as tmp:
            save_file({"images": images.contiguous()}, str(tmp))
    meta = {**settings.record(), "cache": str(path), "generated_now": made, "read_from_cache": n - made}
    return {"images": images, "meta": meta}
