"""Sampling nodes: the shared noise bank, a model's samples from it (the
same noise for every model), ANL's sampling conditions and its text-prompt
grid."""

from __future__ import annotations

import torch
from PIL import Image

from diffusion_transfer.core.data.contact_sheet import labelled_rows
from diffusion_transfer.core.data.images import to_tensor, to_uint8
from diffusion_transfer.core.methods.anl import image_conditions, masked_images, text_conditions
from diffusion_transfer.core.models.adapted import AdaptedUNet
from diffusion_transfer.core.models.class_labels import is_class_conditional
from diffusion_transfer.core.models.text_to_image import text_conditioning_of
from diffusion_transfer.core.models.unet import learns_variance
from diffusion_transfer.core.sampling import make_noise_bank
from diffusion_transfer.core.sampling.text_to_image import model_scheduler, sample_text_to_image
from diffusion_transfer.project.schema import (
    DatasetParams,
    EvaluationParams,
    InvalidParametersError,
    MethodParams,
    SamplingParams,
    ScheduleParams,
)
from diffusion_transfer.pipelines.generation import generate
from diffusion_transfer.pipelines.model_space import describe_model_space, model_input_shape
from diffusion_transfer.pipelines.schedule import model_schedule
from diffusion_transfer.pipelines.utils import inference_setup


def sampling_conditions(curated: dict, noise_bank: dict, clip, method: MethodParams,
                        sampling: SamplingParams) -> dict:
    """One condition per noise in the bank: training image i (cycled), masked
    with a random rectangle of rate delta (ANL section 3.3), through CLIP."""
    n = len(noise_bank["noise"])
    images = to_tensor(curated["images"].numpy())
    picked = images[torch.arange(n) % images.shape[0]]
    gen = torch.Generator().manual_seed(sampling.seed + 2)
    masked = masked_images(picked, method.condition.mask_rate, gen)
    return {"embeddings": image_conditions(clip, masked),
            "meta": {"mask_rate": method.condition.mask_rate, "n": n, "images": "training images, cycled"}}


def create_noise_bank(sampling: SamplingParams, source_model) -> dict:
    """x_T for every sample, of the shape the source model denoises (its latents for a latent model)."""
    bank = make_noise_bank(sampling.n_samples, model_input_shape(source_model), seed=sampling.seed)
    return {"noise": bank, "meta": {"seed": sampling.seed, "n": sampling.n_samples}}


def sample(model, noise_bank: dict, sampling: SamplingParams, schedule: ScheduleParams,
           conditions: dict | None = None) -> dict:
    """Generate one image per noise in the bank (same noise for every model);
    a conditional model (ANL) takes the i-th of ``conditions["embeddings"]``."""
    sched = model_schedule(model, schedule)
    cond = conditions["embeddings"] if conditions is not None else None
    if cond is None and isinstance(model, AdaptedUNet) and model.adapter.needs_condition:
        raise ValueError(f"the {model.kind} model is conditional: sampling needs conditions")
    images = generate(model, noise_bank["noise"], sampling, sched, cond)
    meta = {"sampler": sampling.sampler, "steps": sampling.steps, "eta": sampling.eta, **describe_model_space(model)}
    if is_class_conditional(model):
        meta["guidance_scale"] = sampling.guidance_scale
    if sampling.sampler == "ddpm":  # ancestral sampling: the model's learned variance, else the fixed one
        meta["variance"] = ("learned (the model's variance channels, guided-diffusion's learned range)"
                            if learns_variance(model) else "fixed (posterior beta-tilde)")
    if conditions is not None:
        meta["conditions"] = conditions.get("meta", {})
    return {"images": torch.from_numpy(to_uint8(images)), "meta": meta}


def sample_target(model, noise_bank: dict, sampling: SamplingParams, schedule: ScheduleParams, dataset: DatasetParams,
                  conditions: dict | None = None) -> dict:
    """:func:`sample` on the first ``datasets.<name>.n_samples`` noises of the
    bank (all when unset). The bank is prefix-stable, so target sample i still
    shares its noise with source sample i."""
    n_bank = len(noise_bank["noise"])
    n = dataset.n_samples or n_bank
    if n > n_bank:
        raise InvalidParametersError(
            f"Invalid parameters in 'datasets.{dataset.name}.n_samples': {n} is more than the noise bank's "
            f"{n_bank} (sampling.n_samples)")
    bank = {**noise_bank, "noise": noise_bank["noise"][:n]}
    if conditions is not None:
        conditions = {**conditions, "embeddings": conditions["embeddings"][:n]}
    return sample(model, bank, sampling, schedule, conditions)


def sample_prompts(model, noise_bank: dict, clip, method: MethodParams, sampling: SamplingParams,
                   schedule: ScheduleParams) -> Image.Image:
    """Text-to-image samples of a conditional model (ANL section 4): each
    prompt's CLIP text embedding as the condition, one row per prompt, on the
    first noises of the bank. Without prompts, a one-line note image."""
    sched = model_schedule(model, schedule)
    prompts, k = method.condition.prompts, min(method.condition.n_per_prompt, len(noise_bank["noise"]))
    if not prompts:
        return _text_image("no prompts configured (methods.anl.condition.prompts)")
    rows = []
    for prompt in prompts:
        cond = text_conditions(clip, prompt).expand(k, -1)
        rows.append(to_uint8(generate(model, noise_bank["noise"][:k], sampling, sched, cond)))
    return labelled_rows(list(zip(prompts, rows)))


def _text_image(text: str) -> Image.Image:
    from PIL import ImageDraw

    img = Image.new("RGB", (8 * len(text) + 16, 24), "white")
    ImageDraw.Draw(img).text((8, 6), text, fill="black")
    return img


def sample_text_to_image_model(model, noise_bank: dict, sampling: SamplingParams, conditions: dict) -> dict:
    """A text-to-image model's samples, one per noise in the bank: prompt i
    (``sampling.prompts``, else the training captions, cycled) under
    classifier-free guidance (``sampling.guidance_scale`` against
    ``sampling.negative_prompt``) with the model's own diffusers scheduler
    (core/sampling/text_to_image.py), ``sampling.steps`` steps."""
    text = text_conditioning_of(model)
    prompts = list(sampling.prompts or conditions["meta"]["captions"])
    n = len(noise_bank["noise"])
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    scheduler = model_scheduler(model)
    device, _ = inference_setup(sampling.precision)
    model.eval().to(device)
    gen = torch.Generator().manual_seed(sampling.seed + 1)
    negative = text.encode([sampling.negative_prompt])
    out = []
    for i in range(0, n, sampling.batch_size):
        batch = prompts[i : i + sampling.batch_size]
        x = noise_bank["noise"][i : i + len(batch)].to(device)
        out.append(sample_text_to_image(model, scheduler, x, text.encode(batch), negative.expand(len(batch), -1, -1),
                                        sampling.guidance_scale, sampling.steps, gen, sampling.eta).cpu())
    meta = {"sampler": type(scheduler).__name__ + " (the model's scheduler)", "steps": sampling.steps,
            "eta": sampling.eta, "guidance_scale": sampling.guidance_scale,
            "negative_prompt": sampling.negative_prompt, "prompts": prompts, **describe_model_space(model)}
    return {"images": torch.from_numpy(to_uint8(torch.cat(out))), "meta": meta}


def sample_absent_concepts(model, noise_bank: dict, sampling: SamplingParams, evaluation: EvaluationParams) -> dict:
    """Each prompt of ``evaluation.text_to_image.absent_prompts`` on the first
    ``n_per_prompt`` noises of the bank (prompt-major), sampled as the run's
    samples are: the source and the fine-tuned model see the same seeds."""
    t2i = evaluation.text_to_image
    k = min(t2i.n_per_prompt, len(noise_bank["noise"]))
    prompts = [c.prompt for c in t2i.absent_prompts for _ in range(k)]
    if not prompts:
        return {"images": torch.zeros(0, 1, 1, 3, dtype=torch.uint8), "meta": {"prompts": [], "n_per_prompt": 0}}
    bank = {"noise": noise_bank["noise"][:k].repeat(len(t2i.absent_prompts), *([1] * (noise_bank["noise"].ndim - 1)))}
    out = sample_text_to_image_model(model, bank, sampling.model_copy(update={"prompts": prompts}),
                                     {"meta": {"captions": prompts}})
    out["meta"]["n_per_prompt"] = k
    return out
