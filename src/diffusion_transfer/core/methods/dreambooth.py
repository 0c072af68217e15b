"""DreamBooth's prior preservation (Ruiz et al. 2023, Eq. 2), as diffusers'
``examples/dreambooth/train_dreambooth_lora.py`` trains it:

    L = mean_{instance} (pred - target)^2 + prior_loss_weight * mean_{class} (pred - target)^2

Each step concatenates the batch of training images (with their captions'
hidden states) and as many class examples (images the source model generated
once from the class prompt, with the class prompt's hidden states) into one
batch of 2B, draws t and eps for each of the 2B, runs the student once, and
splits its output in two (``torch.chunk(model_pred, 2, dim=0)`` in the
released script). The instance half takes the method's timestep weighting
(``constant`` by default; diffusers' ``--snr_gamma`` is ``min_snr_x0``); the
prior half is the plain mean, as the script's ``prior_loss`` is.

The released script pairs example i with class image ``i % num_class_images``
in a shuffled loader; here each step draws B class examples uniformly with
the run's generator, which has the same expectation and is reproducible.
How the class images are made (prompt, number, sampler settings) is the
pipeline's business (``pipelines/finetune/class_images.py``); the loss gets
them already in the model's space with :meth:`PriorPreservationLoss.with_prior`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models.unet import model_output
from ..schedule import NoiseSchedule, randn, sample_timesteps
from .base import WEIGHTINGS, check_choice, check_float, per_sample_mse, timestep_weight

__all__ = ["CLASS_IMAGE_DEFAULTS", "ClassImageSettings", "PriorPreservationLoss", "class_image_settings"]

#: How the class images are sampled: ``StableDiffusionPipeline.__call__``'s
#: defaults, which the released script uses (``pipeline(example["prompt"])``),
#: and its ``--sample_batch_size``; the seed is ours (the script draws unseeded).
CLASS_IMAGE_DEFAULTS: dict[str, Any] = {"steps": 50, "guidance_scale": 7.5, "negative_prompt": "", "seed": 0,
                                        "batch_size": 4}


@dataclass(frozen=True)
class ClassImageSettings:
    """DreamBooth's class images: ``num_class_images`` samples of ``class_prompt``."""

    class_prompt: str | None
    num_class_images: int
    steps: int
    guidance_scale: float
    negative_prompt: str
    seed: int
    batch_size: int

    def record(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def class_image_settings(class_prompt: Any = None, num_class_images: Any = 100,
                         class_images: dict[str, Any] | None = None) -> ClassImageSettings:
    """The class-image settings of ``methods.dreambooth``, checked; ``class_prompt``
    may be None here (a run without a text-to-image model never needs one;
    the pre-run check asks for it where a run does)."""
    if class_prompt is not None and (not isinstance(class_prompt, str) or not class_prompt.strip()):
        raise ValueError(f"class_prompt must be a non-empty string (e.g. 'a photo of dog'), got {class_prompt!r}")
    given = dict(class_images or {})
    unknown = sorted(set(given) - set(CLASS_IMAGE_DEFAULTS))
    if unknown:
        raise ValueError(f"class_images takes {sorted(CLASS_IMAGE_DEFAULTS)}, not {unknown}")
    s = {**CLASS_IMAGE_DEFAULTS, **given}
    if not isinstance(s["negative_prompt"], str):
        raise ValueError(f"class_images.negative_prompt must be a string, got {s['negative_prompt']!r}")
    if isinstance(s["seed"], bool) or not isinstance(s["seed"], int) or s["seed"] < 0:
        raise ValueError(f"class_images.seed must be an int >= 0, got {s['seed']!r}")
    return ClassImageSettings(class_prompt, _positive_int("num_class_images", num_class_images),
                              _positive_int("class_images.steps", s["steps"]),
                              check_float("class_images.guidance_scale", s["guidance_scale"]),
                              s["negative_prompt"], s["seed"], _positive_int("class_images.batch_size",
                                                                            s["batch_size"]))


class PriorPreservationLoss:
    """DreamBooth's loss. Returns ``{"loss", "diffusion", "prior"}``: the
    instance term (weighted) and the prior term (before ``prior_loss_weight``)."""

    def __init__(self, schedule: NoiseSchedule, prior_loss_weight: float = 1.0, weighting: str = "constant",
                 gamma: float = 1.0, k: float = 1.0, min_snr_gamma: float = 5.0) -> None:
        self.schedule = schedule
        self.prior_loss_weight = check_float("prior_loss_weight", prior_loss_weight)
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        self.gamma, self.k = check_float("gamma", gamma), check_float("k", k)
        self.min_snr_gamma = check_float("min_snr_gamma", min_snr_gamma)
        self.prior_images: torch.Tensor | None = None  # (M, C, h, w), the model's space
        self.prior_condition: torch.Tensor | None = None  # (1, L, D): the class prompt's hidden states

    def with_prior(self, images: torch.Tensor, condition: torch.Tensor) -> "PriorPreservationLoss":
        """This loss with its class examples bound: ``images`` (M, C, h, w) in
        the model's space and the class prompt's hidden states (1, L, D)."""
        bound = PriorPreservationLoss(self.schedule, self.prior_loss_weight, self.weighting, self.gamma, self.k,
                                      self.min_snr_gamma)
        bound.prior_images, bound.prior_condition = images, condition
        return bound

    def __call__(self, student: torch.nn.Module, images: torch.Tensor, teacher: torch.nn.Module | None = None,
                 generator: torch.Generator | None = None,
                 condition: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.prior_images is None or self.prior_condition is None or condition is None:
            raise ValueError("DreamBooth's loss needs its class examples (with_prior) and the batch's captions")
        b, c = images.shape[:2]
        pick = torch.randint(len(self.prior_images), (b,), generator=generator).tolist()
        x0 = torch.cat([images, self.prior_images[pick].to(images)])
        context = torch.cat([condition, self.prior_condition.to(condition).expand(b, -1, -1)])
        t = sample_timesteps(2 * b, self.schedule.num_timesteps, x0, generator)
        noise = randn(tuple(x0.shape), x0, generator)
        pred = model_output(student, self.schedule.q_sample(x0, t, noise), t, context)[:, :c]
        mse = per_sample_mse(pred, self.schedule.training_target(x0, noise, t))
        weight = timestep_weight(self.schedule, t[:b], self.weighting, gamma=self.gamma, k=self.k,
                                 min_snr_gamma=self.min_snr_gamma)
        instance = (weight * mse[:b]).mean()
        prior = mse[b:].mean()
        return {"loss": instance + self.prior_loss_weight * prior, "diffusion": instance.detach(),
                "prior": prior.detach()}

    def __repr__(self) -> str:
        return f"PriorPreservationLoss(prior_loss_weight={self.prior_loss_weight}, weighting={self.weighting!r})"

    @property
    def params(self) -> dict[str, Any]:
        return {"prior_loss_weight": self.prior_loss_weight, "weighting": self.weighting, "gamma": self.gamma,
                "k": self.k, "min_snr_gamma": self.min_snr_gamma}
