"""TAN: Transfer learning with Adversarial Noise (similarity-guided training
and adversarial noise selection, for few-shot targets).

Similarity-guided loss (Eq. 6 / 9), with a fixed noisy domain classifier
p_phi(y | x_t, t) (y = 1: target):

    L = E || eps* - eps_theta,psi(x_t*, t) - sigmahat_t^2 * gamma * grad_{x_t*} log p_phi(y=T | x_t*, t) ||^2
    sigmahat_t = (1 - abar_{t-1}) * sqrt(alpha_t / (1 - abar_t))

Adversarial noise selection (Eq. 8): starting from eps^0 ~ N(0, I), J steps of

    eps^{j+1} = Norm(eps^j + omega * grad_{eps^j} || eps^j - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps^j, t) ||^2)

where Norm re-standardises each sample to mean 0 and std 1; the ascent uses
``torch.autograd.grad`` with respect to the noise only and never updates the
model. x_t* is built from eps* = eps^J. The guidance term is held fixed during
the ascent (the paper: "almost unchanged in the process").

Shift adaptors (section 3.3): every residual block l becomes
x_l = theta_l(x) + psi_l(x) with psi_l a small bottleneck (1x1 conv down to
``rank`` channels, SiLU, 1x1 conv up, zero-initialised), so training starts at
the source model; only the adaptors train (about 1-2% of the parameters).

Ablations (Fig. 4): ``adversarial=False`` (similarity-guided only),
``adversarial=False, gamma=0`` (adaptor only).

Variants (``variant: paper | authors_code``, as SDFT has; each difference is
also its own parameter, an explicit value winning over the variant's):

- ``paper`` (the default): Eq. 6 and 8 as written. ``shift: sigma_hat``
  (the target shift gamma sigmahat_t^2 grad), ``adversarial_reduction: sum``
  (each sample's own squared error, so each steps omega),
  ``adversarial_model_grad: every_step`` (grad_eps through eps_theta's input
  x_t(eps) at every ascent step), ``adversarial_timesteps: fixed`` (one t for
  the ascent and the loss), omega = 0.02 (TAN 5.2).
- ``authors_code``: ChhaviPan23/DPMs-ANT ``train.py``: ``shift:
  one_minus_abar`` (target e - c (1 - abar_t) grad, gamma playing c),
  ``adversarial_reduction: mean`` (the squared error summed per sample then
  averaged over the batch: each sample steps omega / B),
  ``adversarial_model_grad: first_step`` (x_t is rebuilt detached after the
  first ascent step, so later steps only see the direct eps term),
  ``adversarial_timesteps: redraw`` (``generate_xt`` draws a new t after every
  ascent step; the loss uses the last), with ``configs/DDPM/base.yaml``'s
  c = 5 and omega = 0.02 (``configs/config.py``'s defaults, c = 10 and
  omega = 0.2, are overridden by that file, which the README's command runs).

Why ``paper`` is the default: TAN reports its results with the settings of its
section 5.2 (gamma = 5, J = 10, omega = 0.02) and Eq. 6-8; the released
code is a later, partly different implementation (docs/DEVIATIONS.md).

Other parameterisations (``schedule.prediction_type``): the guided target is
defined on eps and converted to the native target the model outputs, the one
whose implied eps at x_t* is eps_target (``output_from_eps``): for v,
v* = sqrt(abar_t) eps_target - sqrt(1 - abar_t) x0*, for sample x0*, with
x0* = (x_t* - sqrt(1 - abar_t) eps_target) / sqrt(abar_t). The adversarial
ascent uses the eps converted from the model's output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.adapted import Adapter, AdaptedUNet, register_adapter
from ..models.unet import model_output, predict_eps
from ..schedule import NoiseSchedule, randn, sample_timesteps
from .anl import residual_blocks
from .base import check_choice, check_float, per_sample_mse

__all__ = ["TAN_VARIANTS", "ShiftAdaptors", "TANLoss", "adversarial_noise", "prepare_tan", "select_adversarial_noise",
           "sigma_hat", "standardise"]

TAN_VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"shift": "sigma_hat", "adversarial_reduction": "sum", "adversarial_model_grad": "every_step",
              "adversarial_timesteps": "fixed", "gamma": 5.0, "omega": 0.02},
    "authors_code": {"shift": "one_minus_abar", "adversarial_reduction": "mean", "adversarial_model_grad": "first_step",
                     "adversarial_timesteps": "redraw", "gamma": 5.0, "omega": 0.02},
}
_CHOICES = {"shift": ("sigma_hat", "one_minus_abar"), "adversarial_reduction": ("sum", "mean"),
            "adversarial_model_grad": ("every_step", "first_step"), "adversarial_timesteps": ("fixed", "redraw")}


def sigma_hat(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """sigmahat_t = (1 - abar_{t-1}) sqrt(alpha_t / (1 - abar_t)), float32 (B,)."""
    idx = t.long().cpu()
    abar = schedule.alphas_cumprod[idx]
    abar_prev = schedule.alphas_cumprod_prev[idx]
    alpha = schedule.alphas[idx]
    return ((1.0 - abar_prev) * torch.sqrt(alpha / (1.0 - abar))).to(torch.float32)


def standardise(eps: torch.Tensor) -> torch.Tensor:
    """Norm(.) of Eq. 8: each sample to mean 0 and standard deviation 1."""
    flat = eps.flatten(1)
    flat = (flat - flat.mean(dim=1, keepdim=True)) / flat.std(dim=1, keepdim=True).clamp_min(1e-12)
    return flat.view_as(eps)


def adversarial_noise(
    model: nn.Module, x0: torch.Tensor, t: torch.Tensor, eps0: torch.Tensor, schedule: NoiseSchedule,
    steps: int = 10, omega: float = 0.02,
) -> torch.Tensor:
    """The "worse-case" noise eps^J of Eq. 8 (detached); the model's
    parameters receive no gradient."""
    return select_adversarial_noise(model, x0, t, eps0, schedule, steps, omega)[0]


def select_adversarial_noise(
    model: nn.Module, x0: torch.Tensor, t: torch.Tensor, eps0: torch.Tensor, schedule: NoiseSchedule,
    steps: int = 10, omega: float = 0.02, *, reduction: str = "sum", model_grad: str = "every_step",
    timesteps: str = "fixed", generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """J ascent steps eps <- Norm(eps + omega grad_eps E) from ``eps0``; returns
    (eps^J, t), both detached. E = sum_b ||eps_b - eps_theta(x_t(eps_b), t_b)||^2
    (``reduction="sum"``, Eq. 8) or that over B (``"mean"``, DPMs-ANT);
    the gradient goes through eps_theta's input at every step
    (``model_grad="every_step"``) or only at the first (``"first_step"``);
    ``timesteps="redraw"`` draws a new t from ``generator`` after every step.
    The model's parameters receive no gradient."""
    eps = eps0.detach()
    for j in range(steps):
        with torch.enable_grad():
            e = eps.clone().requires_grad_(True)
            x_t = schedule.q_sample(x0.detach(), t, e if (model_grad == "every_step" or j == 0) else e.detach())
            err = (e - predict_eps(model, x_t, t, schedule=schedule)).pow(2).sum()
            if reduction == "mean":
                err = err / e.shape[0]
            (grad,) = torch.autograd.grad(err, e)
        eps = standardise(eps + omega * grad)
        if timesteps == "redraw":
            t = sample_timesteps(e.shape[0], schedule.num_timesteps, x0, generator)
    return eps.detach(), t


class TANLoss:
    """Eq. 9 with adversarial noise. Needs the classifier: build with
    ``TANLoss(schedule, ...)`` then :meth:`with_classifier`. Returns
    ``{"loss", "diffusion", "guidance"}``: the loss, the plain denoising MSE on x_t*
    (for comparison with other methods) and the mean guidance-shift norm."""

    def __init__(self, schedule: NoiseSchedule, gamma: float = 5.0, adversarial: bool = True,
                 adversarial_steps: int = 10, omega: float = 0.02, target_class: int = 1,
                 classifier: nn.Module | None = None, shift: str = "sigma_hat", adversarial_reduction: str = "sum",
                 adversarial_model_grad: str = "every_step", adversarial_timesteps: str = "fixed") -> None:
        self.schedule = schedule
        self.gamma = check_float("gamma", gamma)
        if not isinstance(adversarial, bool):
            raise ValueError(f"adversarial must be true or false, got {adversarial!r}")
        self.adversarial = adversarial
        if isinstance(adversarial_steps, bool) or not isinstance(adversarial_steps, int) or adversarial_steps < 0:
            raise ValueError(f"adversarial_steps must be an integer >= 0, got {adversarial_steps!r}")
        self.adversarial_steps = adversarial_steps
        self.omega = check_float("omega", omega)
        self.target_class = int(target_class)
        self.classifier = classifier
        self.shift = check_choice("shift", shift, _CHOICES["shift"])
        self.adversarial_reduction = check_choice("adversarial_reduction", adversarial_reduction,
                                                  _CHOICES["adversarial_reduction"])
        self.adversarial_model_grad = check_choice("adversarial_model_grad", adversarial_model_grad,
                                                   _CHOICES["adversarial_model_grad"])
        self.adversarial_timesteps = check_choice("adversarial_timesteps", adversarial_timesteps,
                                                  _CHOICES["adversarial_timesteps"])

    @classmethod
    def from_params(cls, schedule: NoiseSchedule, params: dict[str, Any] | None = None) -> "TANLoss":
        """Build from ``methods.tan`` hyperparameters: ``variant`` ("paper" |
        "authors_code") fills the implementation options; explicit keys win."""
        params = dict(params or {})
        variant = params.pop("variant", "paper")
        if variant not in TAN_VARIANTS:
            raise ValueError(f"tan variant must be one of {sorted(TAN_VARIANTS)}, got {variant!r}")
        return cls(schedule, **{**TAN_VARIANTS[variant], **params})

    def with_classifier(self, classifier: nn.Module) -> "TANLoss":
        classifier.eval().requires_grad_(False)
        return TANLoss(self.schedule, self.gamma, self.adversarial, self.adversarial_steps, self.omega,
                       self.target_class, classifier, self.shift, self.adversarial_reduction,
                       self.adversarial_model_grad, self.adversarial_timesteps)

    def target(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """eps - sigmahat_t^2 gamma grad log p(target | x_t, t): what eps_theta regresses to
        (``shift="one_minus_abar"``: eps - gamma (1 - abar_t) grad, DPMs-ANT's c (1 - abar_t))."""
        if self.gamma == 0.0:
            return eps
        if self.classifier is None:
            raise ValueError("TAN needs the noisy domain classifier: call with_classifier(...) first")
        if next(self.classifier.parameters()).device != x_t.device:
            self.classifier.to(x_t.device)
        grad = self.classifier.grad_log_prob(x_t, t, self.target_class)
        if self.shift == "sigma_hat":
            scale = sigma_hat(self.schedule, t) ** 2
        else:
            scale = (1.0 - self.schedule.alphas_cumprod[t.long().cpu()]).to(torch.float32)
        shift = (scale * self.gamma).to(x_t.device).view(-1, 1, 1, 1)
        return eps - shift * grad

    def __call__(self, student: nn.Module, images: torch.Tensor, teacher: nn.Module | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        t = sample_timesteps(b, self.schedule.num_timesteps, images, generator)
        eps = randn(tuple(images.shape), images, generator)
        if self.adversarial and self.adversarial_steps > 0:
            eps, t = select_adversarial_noise(
                student, images, t, eps, self.schedule, self.adversarial_steps, self.omega,
                reduction=self.adversarial_reduction, model_grad=self.adversarial_model_grad,
                timesteps=self.adversarial_timesteps, generator=generator)
        x_t = self.schedule.q_sample(images, t, eps)
        eps_target = self.target(x_t, t, eps).detach()
        target = self.schedule.output_from_eps(eps_target, x_t, t)  # native (eps, v or x0)
        out = model_output(student, x_t, t)
        pred = out[:, :images.shape[1]]
        loss = per_sample_mse(pred, target).mean()
        plain = self.schedule.training_target(images, eps, t)
        return {"loss": loss, "diffusion": per_sample_mse(pred, plain).mean().detach(),
                "guidance": (eps_target - eps).flatten(1).norm(dim=1).mean().detach()}

    @property
    def params(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "adversarial": self.adversarial, "adversarial_steps": self.adversarial_steps,
                "omega": self.omega, "target_class": self.target_class, "shift": self.shift,
                "adversarial_reduction": self.adversarial_reduction,
                "adversarial_model_grad": self.adversarial_model_grad,
                "adversarial_timesteps": self.adversarial_timesteps}


class ShiftAdaptor(nn.Module):
    """psi_l: 1x1 conv (in -> rank) -> SiLU -> 1x1 conv (rank -> out), zero output."""

    def __init__(self, cin: int, cout: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(cin, rank, 1)
        self.act = nn.SiLU()
        self.up = nn.Conv2d(rank, cout, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class _ShiftHook:
    """Adds psi_l(block input) to block l's output (a plain object so that
    ``copy.deepcopy`` re-binds it to the copied adaptor)."""

    def __init__(self, adaptor: ShiftAdaptor) -> None:
        self.adaptor = adaptor

    def __call__(self, block: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output + self.adaptor(args[0])


@register_adapter
class ShiftAdaptors(Adapter):
    """One shift adaptor per residual block (``ResnetBlock2D``) of the UNet."""

    kind = "tan"

    def __init__(self, unet: nn.Module, rank: int = 8) -> None:
        super().__init__({"rank": int(rank)})
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"adaptor rank must be a positive int, got {rank!r}")
        blocks = residual_blocks(unet)
        if not blocks:
            raise ValueError("this UNet has no residual blocks (ResnetBlock2D) for TAN's shift adaptors")
        self.adaptors = nn.ModuleList([ShiftAdaptor(b.in_channels, b.out_channels, rank) for _, b in blocks])

    def attach(self, unet: nn.Module) -> None:
        for (_, block), adaptor in zip(residual_blocks(unet), self.adaptors):
            block.register_forward_hook(_ShiftHook(adaptor))


def prepare_tan(unet: nn.Module, rank: int = 8) -> AdaptedUNet:
    """Freeze the UNet and attach the shift adaptors (the only trainable parameters)."""
    unet.requires_grad_(False)
    return AdaptedUNet(unet, ShiftAdaptors(unet, rank=rank))
