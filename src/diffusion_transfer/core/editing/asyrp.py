"""Asyrp (Kwon et al., ICLR 2023): f_t, the asymmetric reverse process, DDIM
inversion and editing.

Re-derived from the paper and from kwonminki/Asyrp_official (read, not
copied). The choices the paper leaves open follow the released code:

- **f_t** (:class:`ImplicitFunction`) is the code's ``DeltaBlock``: a 1x1 conv
  C->C, plus a linear projection of SiLU(temb) (the UNet's own time
  embedding), GroupNorm, SiLU and a second 1x1 conv C->C. One f_t serves
  every timestep (``--get_h_num 1``: a single block conditioned on t). One
  deviation: the last conv is zero-initialised (the code leaves PyTorch's
  default init), so that f_t starts at Delta h = 0 and an untrained edit is
  exactly the DDIM reconstruction.
- **Asymmetric reverse process** (paper Eq. 4, ``denoising_step`` with
  ``index``): for t >= t_edit, x_{t-1} = sqrt(a_{t-1}) P_t(eps(x_t | h + Delta h))
  + D_t(eps(x_t | h)): the x0 prediction uses the edited h, the direction
  term the original one. Below t_edit it is the plain DDIM step.
- **Quality boosting** (paper section 3.4; ``eta = 1 if t < t_addnoise``): the
  steps with t < t_boost are stochastic DDIM steps with eta = 1 (DDPM's
  posterior variance); between t_boost and t_edit eta = 0.
- **Inversion**: deterministic DDIM inversion of the real image to x_T (the
  code's ``precompute_pairs`` inverts to ``t_0 = 999``, i.e. T - 1), then the
  edited reverse process runs from there; the edit interval is [t_edit, T].
- The x0 prediction is not clipped in any of these steps (the code's
  ``denoising_step`` does not clip), and every model output goes through
  the schedule's conversions, so epsilon, v and x0 models all work.
- The edit strength ``scale`` multiplies Delta h (the code's ``hs_coeff[1]``,
  1.0 by default).

The ``model`` argument is a diffusers ``UNet2DModel`` or an ``AdaptedUNet``;
for a conditional adapter (ANL) pass ``conditions``, one row per image.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from diffusion_transfer.core.editing.hspace import HSpace
from diffusion_transfer.core.sampling.common import abar_at, randn_like, sqrt
from diffusion_transfer.core.sampling.ddim import ddim_invert, ddim_timesteps, sample_ddim
from diffusion_transfer.core.schedule import NoiseSchedule
from diffusion_transfer.core.models.latent import decode_from, encode_for


class ImplicitFunction(nn.Module):
    """f_t: Delta h = conv2(SiLU(GN(conv1(h) + W SiLU(temb)))), 1x1 convs.

    ``channels`` is h's width (the UNet's last ``block_out_channels``),
    ``temb_channels`` the UNet's time-embedding width (``None``: no time
    conditioning, the code's ``--ignore_timesteps``). ``conv2`` starts at zero
    so Delta h = 0 at initialisation (see the module docstring)."""

    def __init__(self, channels: int, temb_channels: int | None, groups: int = 32) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.config = {"channels": int(channels), "temb_channels": temb_channels, "groups": int(groups)}
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=1)
        self.temb_proj = nn.Linear(temb_channels, channels) if temb_channels else None
        self.norm = nn.GroupNorm(math.gcd(int(groups), channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    @classmethod
    def for_model(cls, model: nn.Module, use_timestep: bool = True) -> "ImplicitFunction":
        """An f_t sized for ``model``'s h-space and time embedding."""
        with HSpace(model) as space:
            return cls(space.channels, space.temb_channels if use_timestep else None)

    def forward(self, h: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.conv1.weight.dtype
        out = self.conv1(h.to(dtype))
        if self.temb_proj is not None:
            if temb is None:
                raise ValueError("this f_t is conditioned on t but the UNet gave no time embedding")
            out = out + self.temb_proj(F.silu(temb.to(dtype)))[:, :, None, None]
        return self.conv2(F.silu(self.norm(out)))


def model_eps(model: nn.Module, x: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """eps(x_t, t) with autograd on (unlike ``model_eps_fn``): the raw output
    through ``schedule.eps_from_output``; a learned-variance output keeps its
    first C channels."""
    out = model(x, t)
    out = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, (tuple, list)) else out)
    c = x.shape[1]
    if out.shape[1] == 2 * c:
        out = out[:, :c]
    return schedule.eps_from_output(out.to(x.dtype), x, t)


def timestep_at(schedule: NoiseSchedule, fraction: float, name: str = "fraction") -> int:
    """The timestep ``round(fraction * T)`` clamped to [0, T - 1]; SDFT app. E's
    editing range 0.5T is ``timestep_at(schedule, 0.5)``."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"{name} must be a fraction of T in [0, 1], got {fraction!r}")
    return min(int(round(float(fraction) * schedule.num_timesteps)), schedule.num_timesteps - 1)


def _conditioned(model: nn.Module, condition: torch.Tensor | None):
    if condition is None:
        return contextlib.nullcontext()
    if not hasattr(model, "conditioned"):
        raise ValueError("conditions were given but the model is not a conditional AdaptedUNet")
    return model.conditioned(condition)


@contextlib.contextmanager
def frozen(model: nn.Module):
    """Freeze ``model``'s parameters (gradients reach f_t only), restoring
    each parameter's ``requires_grad`` afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def asymmetric_post_step(model: nn.Module, space: HSpace, f_t: nn.Module | None, schedule: NoiseSchedule, *,
                         t_edit: int, t_boost: int, scale: float = 1.0,
                         generator: torch.Generator | None = None):
    """A ``sample_ddim`` post_step (the sampler runs eta = 0 with the original
    h) that makes each step Asyrp's:

    - t >= t_edit and ``f_t`` given: the step's x0 prediction is replaced by
      the one from eps(x_t | h + scale Delta h). Since the sampler's step is
      sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, that is adding
      sqrt(a_prev) (x0_edit - x0) to its result (exact, no re-derivation);
    - t < t_boost (and t_prev >= 0): the step is redone with eta = 1,
      sigma = sqrt((1 - a_prev)/(1 - a_t)) sqrt(1 - a_t/a_prev), noise from
      ``generator``.
    """
    abar = schedule.alphas_cumprod

    def post_step(info: dict[str, Any]) -> torch.Tensor:
        t, t_prev, x, x_prev = info["t"], info["t_prev"], info["x"], info["x_prev"]
        a_t, a_prev = abar_at(abar, t), abar_at(abar, t_prev)
        if f_t is not None and t >= t_edit:
            tt = torch.full((x.shape[0],), int(t), dtype=torch.int64, device=x.device)
            with torch.no_grad(), space.editing(f_t, scale):
                eps_edit = model_eps(model, x, tt, schedule)
            x0_edit = (x - sqrt(1.0 - a_t) * eps_edit) / sqrt(a_t)
            x_prev = x_prev + sqrt(a_prev) * (x0_edit - info["x0_pred"])
        elif t < t_boost and t_prev >= 0:
            sigma = sqrt((1.0 - a_prev) / (1.0 - a_t)) * sqrt(1.0 - a_t / a_prev)
            x_prev = (sqrt(a_prev) * info["x0_pred"] + sqrt(1.0 - a_prev - sigma**2) * info["eps"]
                      + sigma * randn_like(x, generator))
        return x_prev

    return post_step


def _check_interval(schedule: NoiseSchedule, t_edit: int, t_boost: int) -> None:
    T = schedule.num_timesteps
    if not 0 <= int(t_edit) <= T - 1:
        raise ValueError(f"t_edit must be a timestep in [0, {T - 1}], got {t_edit!r}")
    if not 0 <= int(t_boost) <= int(t_edit):
        raise ValueError(f"t_boost must be in [0, t_edit = {t_edit}], got {t_boost!r}")


def invert(model: nn.Module, x0: torch.Tensor, schedule: NoiseSchedule, steps: int,
           condition: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic DDIM inversion of ``x0`` to x_{T-1} with ``steps`` model
    calls (Asyrp's ``n_inv_step``)."""
    with torch.no_grad(), _conditioned(model, condition):
        return ddim_invert(lambda x, t: model_eps(model, x, t, schedule), x0, schedule, steps=steps)


def generate(model: nn.Module, f_t: nn.Module | None, x_T: torch.Tensor, schedule: NoiseSchedule, steps: int, *,
             t_edit: int, t_boost: int = 0, scale: float = 1.0, generator: torch.Generator | None = None,
             condition: torch.Tensor | None = None) -> torch.Tensor:
    """Asyrp's generative process from x_{T-1} with ``steps`` DDIM steps:
    asymmetric in [t_edit, T], deterministic DDIM in [t_boost, t_edit),
    stochastic (eta = 1) below t_boost. ``f_t=None`` is the unedited process
    (with the same boosting, so the same ``generator`` gives the same noise)."""
    _check_interval(schedule, t_edit, t_boost)
    with HSpace(model) as space, torch.no_grad(), _conditioned(model, condition):
        post = asymmetric_post_step(model, space, f_t, schedule, t_edit=int(t_edit), t_boost=int(t_boost),
                                    scale=scale, generator=generator)
        return sample_ddim(lambda x, t: model_eps(model, x, t, schedule), x_T, schedule, steps=steps, eta=0.0,
                           clip_x0=False, post_step=post)


def edit(model: nn.Module, f_t: nn.Module | None, images: torch.Tensor, schedule: NoiseSchedule, *,
         inversion_steps: int, steps: int, t_edit: int, t_boost: int = 0, scale: float = 1.0, batch_size: int = 8,
         seed: int = 0, conditions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Edit real ``images`` (B, 3, H, W) in [-1, 1]: DDIM inversion, then the
    edited and the unedited generative process from the same x_T (and the
    same boosting noise: one generator seeded ``seed`` per batch, reseeded for
    each). Returns ``{"edited", "reconstructed"}`` (float, CPU, clamped to
    [-1, 1])."""
    out = edit_many(model, {"edit": f_t}, images, schedule, inversion_steps=inversion_steps, steps=steps,
                    t_edit=t_edit, t_boost=t_boost, scale=scale, batch_size=batch_size, seed=seed,
                    conditions=conditions)
    return {"edited": out["edited"]["edit"], "reconstructed": out["reconstructed"]}


def edit_many(model: nn.Module, f_ts: dict[str, nn.Module | None], images: torch.Tensor, schedule: NoiseSchedule,
              *, inversion_steps: int, steps: int, t_edit: int, t_boost: int = 0, scale: float = 1.0,
              batch_size: int = 8, seed: int = 0, conditions: torch.Tensor | None = None,
              callback=None) -> dict[str, Any]:
    """:func:`edit` with several f_t at once: each batch is inverted and
    reconstructed once and then edited by every f_t, which is exactly what
    :func:`edit` gives per f_t (same x_T, same boosting noise) at a fraction
    of the model calls. A latent model edits its inputs' latents and its
    outputs are decoded. Returns ``{"edited": {name: images}, "reconstructed"}``;
    ``callback(name)`` is called after each batch's edit (progress bars)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for f_t in f_ts.values():
        if f_t is not None:
            f_t.eval().to(device)
    edited: dict[str, list[torch.Tensor]] = {name: [] for name in f_ts}
    recon: list[torch.Tensor] = []
    try:
        for i in range(0, images.shape[0], batch_size):
            x0 = images[i:i + batch_size].to(device)
            cond = conditions[i:i + batch_size].to(device) if conditions is not None else None
            x_T = invert(model, encode_for(model, x0), schedule, inversion_steps, cond)
            kw = dict(t_edit=t_edit, t_boost=t_boost, scale=scale, condition=cond)
            for name, f_t in f_ts.items():
                gen = torch.Generator(device).manual_seed(seed + i)  # the same boosting noise for every f_t
                out = generate(model, f_t, x_T, schedule, steps, generator=gen, **kw)
                edited[name].append(decode_from(model, out.float()).detach().cpu())
                if callback is not None:
                    callback(name)
            gen = torch.Generator(device).manual_seed(seed + i)
            recon.append(decode_from(model, generate(model, None, x_T, schedule, steps, generator=gen, **kw).float()).detach().cpu())
    finally:
        model.train(was_training)
    return {"edited": {name: torch.cat(v).clamp(-1, 1) for name, v in edited.items()},
            "reconstructed": torch.cat(recon).clamp(-1, 1)}


def edit_timesteps(schedule: NoiseSchedule, steps: int, t_edit: int) -> list[int]:
    """The training grid (Asyrp's ``seq_train``): the ``steps``-step DDIM grid
    over [0, T - 1] restricted to t >= t_edit, descending."""
    return [t for t in ddim_timesteps(schedule.num_timesteps, steps) if t >= t_edit]
