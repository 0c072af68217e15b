"""What a fine-tuning method is, and the maths every method shares (the registry is registry.py).

A method is a loss callable in the style of NVlabs/edm ``training/loss.py``::

    terms = loss_fn(student, images, teacher=None, generator=None)
    terms["loss"].backward()          # scalar with grad
    terms["diffusion"], ...           # detached named terms for logging

``images`` are ``(B, 3, H, W)`` in ``[-1, 1]``; ``generator`` (a
``torch.Generator``) drives every random draw of the loss (timesteps, noise) so
that the same seed gives the same run.

``registry.build_method`` turns ``(name, params, schedule)`` into a :class:`Method`
holding the loss plus what the training set-up needs to know: whether a frozen
teacher (the source model) must be passed, and whether the student starts from
the source weights or from a random init.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

import torch

from ..schedule import NoiseSchedule, constant_weight, ddpm_weight, min_snr_weight, min_snr_x0_weight, p2_weight

__all__ = [
    "WEIGHTINGS",
    "LossFn",
    "Method",
    "timestep_weight",
]

LossFn = Callable[..., dict[str, torch.Tensor]]
WEIGHTINGS = ("constant", "p2", "min_snr", "min_snr_x0")


@dataclass(frozen=True)
class Method:
    """A built method: the loss, whether it needs the frozen source model as
    ``teacher``, how the student is initialised (``"source"`` weights or
    ``"random"``), and, for parameter-efficient methods, ``prepare``: it takes
    the student UNet (and, for conditional methods, the condition size) and
    returns the model to train, with frozen parameters set to
    ``requires_grad=False`` and any added modules attached. ``conditional``
    methods (ANL) train and sample with a CLIP embedding per image."""

    name: str
    loss_fn: LossFn
    needs_teacher: bool
    init: Literal["source", "random"]
    prepare: Callable[..., torch.nn.Module] | None = None
    conditional: bool = False
    needs_classifier: bool = False
    #: trains with examples the source model generated once (DreamBooth's class images)
    needs_class_images: bool = False

    def with_classifier(self, classifier: torch.nn.Module) -> "Method":
        """This method with the noisy domain classifier bound into its loss (TAN)."""
        if not self.needs_classifier:
            return self
        return replace(self, loss_fn=self.loss_fn.with_classifier(classifier))

    def with_class_examples(self, images: torch.Tensor, condition: torch.Tensor) -> "Method":
        """This method with its class examples bound into its loss (DreamBooth's prior preservation)."""
        if not self.needs_class_images:
            return self
        return replace(self, loss_fn=self.loss_fn.with_prior(images, condition))

    def build_student(self, unet: torch.nn.Module, condition_dim: int | None = None) -> torch.nn.Module:
        """The model to train, from a fresh copy of the source (or random) UNet."""
        if self.conditional and condition_dim is None:
            raise ValueError(f"method {self.name!r} is conditional: pass condition_dim (the CLIP embedding size)")
        if self.prepare is None:
            return unet
        return self.prepare(unet, condition_dim) if self.conditional else self.prepare(unet)


# --- shared helpers (the draws t ~ U, eps ~ N live in core/schedule.py) -------


def check_float(name: str, value: Any, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def timestep_weight(
    schedule: NoiseSchedule,
    t: torch.Tensor,
    weighting: str,
    *,
    gamma: float = 1.0,
    k: float = 1.0,
    min_snr_gamma: float = 5.0,
    include_ddpm_weight: bool = False,
) -> torch.Tensor:
    """Per-sample weight w(t), float32 on ``t``'s device.

    ``"p2"``: 1 / (k + SNR(t))^gamma; ``"constant"``: 1; ``"min_snr"``:
    min(SNR(t), min_snr_gamma) as SDFT writes it; ``"min_snr_x0"``: the same on
    the x_0 error, as Hang et al. and diffusers' ``--snr_gamma`` weight. With
    ``include_ddpm_weight`` the result is multiplied by
    w_t = (1 - beta_t)(1 - abar_t) / beta_t (SDFT Eq. 2/4).
    """
    if weighting == "p2":
        w = p2_weight(schedule, t, k=k, gamma=gamma)
    elif weighting == "constant":
        w = constant_weight(schedule, t)
    elif weighting == "min_snr":
        w = min_snr_weight(schedule, t, gamma=min_snr_gamma)
    elif weighting == "min_snr_x0":
        w = min_snr_x0_weight(schedule, t, gamma=min_snr_gamma)
    else:
        raise ValueError(f"weighting must be one of {list(WEIGHTINGS)}, got {weighting!r}")
    if include_ddpm_weight:
        w = w * ddpm_weight(schedule, t)
    return w.to(t.device)


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension of (a - b)^2, in float32."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)
