"""Training Asyrp's f_t for one prompt (``train_asyrp``).

The loop re-derives ``run_training`` of kwonminki/Asyrp_official
(``diffusion_latent.py``) with the settings of its ``script_train.sh``:

- every training image is DDIM-inverted once to x_{T-1} (``precompute_pairs``,
  ``inversion_steps`` steps); the UNet stays frozen;
- per image batch, the reverse process runs from x_{T-1} over the
  ``train_steps``-step DDIM grid restricted to t >= t_edit, twice in
  parallel: the edited trajectory (asymmetric steps, x_{t-1} detached
  between steps) and the plain DDIM trajectory (no gradient);
- **one optimiser step per timestep**: the loss at t compares the two
  trajectories' x0 predictions (L1) and the edited x0 prediction with the
  real input image (directional CLIP loss), see ``losses.asyrp_loss``;
- SGD without weight decay, lr 0.5 (``--lr_training 0.5``), StepLR with step
  3 epochs and gamma 0.1 (``--scheduler_step_size 3 --sch_gamma 0.1``),
  batch size 1 (``--bs_train 1``), images in dataset order (no shuffling);
- epochs = ``--n_iter`` (5; SDFT appendix E: 5, or 3 for sad, angry, old).

SDFT appendix E: 100 training images, 50 training steps, 100 inversion
steps, editing range 0.5T; these are the defaults of :class:`AsyrpConfig`
(t_edit given as a fraction of T there, as a timestep here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from diffusion_transfer.core.editing.asyrp import (
    ImplicitFunction,
    _conditioned,
    edit_timesteps,
    frozen,
    invert,
    model_eps,
)
from diffusion_transfer.core.editing.hspace import HSpace
from diffusion_transfer.core.editing.losses import CLIP_WEIGHT, L1_WEIGHT, asyrp_loss, text_direction, text_similarity
from diffusion_transfer.core.sampling.common import abar_at, sqrt
from diffusion_transfer.core.sampling.ddim import ddim_timesteps
from diffusion_transfer.core.schedule import NoiseSchedule
from diffusion_transfer.core.models.latent import decode_from, encode_for


@dataclass
class AsyrpConfig:
    """f_t training settings; defaults: SDFT app. E and Asyrp's script_train.sh."""

    epochs: int = 5
    train_steps: int = 50
    inversion_steps: int = 100
    t_edit: int = 500
    lr: float = 0.5
    lr_step_epochs: int = 3
    lr_gamma: float = 0.1
    batch_size: int = 1
    clip_weight: float = CLIP_WEIGHT
    l1_weight: float = L1_WEIGHT
    scale: float = 1.0
    use_timestep: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "train_steps", "inversion_steps", "lr_step_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "lr_gamma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("clip_weight", "l1_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if isinstance(self.t_edit, bool) or not isinstance(self.t_edit, int) or self.t_edit < 0:
            raise ValueError(f"t_edit must be a non-negative integer timestep, got {self.t_edit!r}")


@dataclass
class AsyrpResult:
    f_t: ImplicitFunction
    history: list[dict[str, float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _check_inputs(cfg: AsyrpConfig, schedule: NoiseSchedule, images: torch.Tensor,
                  conditions: torch.Tensor | None, inverted: torch.Tensor | None = None) -> None:
    if inverted is not None and inverted.shape[0] != images.shape[0]:
        raise ValueError(f"inverted has {inverted.shape[0]} rows but images {images.shape[0]}")
    T = schedule.num_timesteps
    if cfg.t_edit > T - 1:
        raise ValueError(f"t_edit must be a timestep in [0, {T - 1}], got {cfg.t_edit}")
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty (B, 3, H, W) batch, got shape {tuple(images.shape)}")
    if conditions is not None and conditions.shape[0] != images.shape[0]:
        raise ValueError(f"conditions has {conditions.shape[0]} rows for {images.shape[0]} images")


def _fresh_or_copied_f_t(model: nn.Module, cfg: AsyrpConfig, init: ImplicitFunction | None) -> ImplicitFunction:
    """A fresh, zero-output f_t for ``model``, or a copy of ``init``."""
    if init is None:
        return ImplicitFunction.for_model(model, cfg.use_timestep)
    f_t = type(init)(**init.config)
    f_t.load_state_dict(init.state_dict())
    return f_t


def invert_images(model: nn.Module, images: torch.Tensor, schedule: NoiseSchedule, config: AsyrpConfig,
                  conditions: torch.Tensor | None = None) -> torch.Tensor:
    """Every image DDIM-inverted to x_{T-1} once (Asyrp's ``precompute_pairs``),
    in ``config.batch_size`` batches, on the CPU: ``train_asyrp``'s
    ``inverted``, shared by every prompt trained on the same images."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return torch.cat([  # a latent model inverts its inputs' latents
            invert(model, encode_for(model, images[i:i + config.batch_size].float().to(device)), schedule,
                   config.inversion_steps,
                   conditions[i:i + config.batch_size].to(device) if conditions is not None else None).cpu()
            for i in range(0, images.shape[0], config.batch_size)])
    finally:
        model.train(was_training)


def _next_timesteps(schedule: NoiseSchedule, steps: int) -> dict[int, int]:
    grid = ddim_timesteps(schedule.num_timesteps, steps)
    return {t: (grid[i + 1] if i + 1 < len(grid) else -1) for i, t in enumerate(grid)}


def train_asyrp(model: nn.Module, schedule: NoiseSchedule, images: torch.Tensor, clip: Any,
                source: Sequence[str] | str, target: Sequence[str] | str, config: AsyrpConfig | None = None, *,
                conditions: torch.Tensor | None = None, progress: bool = True, desc: str = "asyrp",
                init: ImplicitFunction | None = None, inverted: torch.Tensor | None = None) -> AsyrpResult:
    """Train f_t to move ``images`` (B, 3, H, W) in [-1, 1] from the
    ``source`` texts toward the ``target`` texts in ``clip``'s space (any
    object with differentiable ``encode_images`` and ``encode_text``, both
    returning embeddings). The UNet's parameters are frozen for the run and
    their ``requires_grad`` restored afterwards. ``init``: start from this
    f_t (copied) instead of a fresh, zero-output one. ``inverted``: the
    images' x_{T-1} from :func:`invert_images` with this config's inversion
    settings (computed here when not given). A latent model's x0 predictions
    are decoded for the losses."""
    from tqdm.auto import tqdm

    cfg = config or AsyrpConfig()
    _check_inputs(cfg, schedule, images, conditions, inverted)
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    f_t = _fresh_or_copied_f_t(model, cfg, init).to(device).train()
    direction = text_direction(clip, source, target).to(device)
    text_cos = text_similarity(clip, source, target)
    ts = edit_timesteps(schedule, cfg.train_steps, cfg.t_edit)
    if not ts:
        raise ValueError(f"no training timestep at or above t_edit = {cfg.t_edit} on a {cfg.train_steps}-step grid")
    nxt = _next_timesteps(schedule, cfg.train_steps)
    abar = schedule.alphas_cumprod
    opt = torch.optim.SGD(f_t.parameters(), lr=cfg.lr, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)
    history: list[dict[str, float]] = []
    was_training = model.training
    model.eval()
    x_src_all = images.float()
    with frozen(model), HSpace(model) as space:
        x_T_all = inverted if inverted is not None else invert_images(model, x_src_all, schedule, cfg, conditions)
        n_batches = (images.shape[0] + cfg.batch_size - 1) // cfg.batch_size
        bar = tqdm(total=cfg.epochs * n_batches, desc=desc, unit="batch", disable=not progress)
        try:
            for epoch in range(cfg.epochs):
                for b in range(n_batches):
                    sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
                    x_src = x_src_all[sl].to(device)
                    cond = conditions[sl].to(device) if conditions is not None else None
                    x_edit = x_plain = x_T_all[sl].to(device)
                    terms = {"loss": 0.0, "direction": 0.0, "l1": 0.0}
                    with _conditioned(model, cond):
                        for t in ts:
                            a_t, a_prev = abar_at(abar, t), abar_at(abar, nxt[t])
                            tt = torch.full((x_src.shape[0],), t, dtype=torch.int64, device=device)
                            opt.zero_grad(set_to_none=True)
                            with space.editing(f_t, cfg.scale):
                                eps_edit = model_eps(model, x_edit, tt, schedule)
                            with torch.no_grad():
                                eps_orig = model_eps(model, x_edit, tt, schedule)
                                eps_plain = model_eps(model, x_plain, tt, schedule)
                            x0_edit = (x_edit - sqrt(1.0 - a_t) * eps_edit) / sqrt(a_t)
                            x0_plain = (x_plain - sqrt(1.0 - a_t) * eps_plain) / sqrt(a_t)
                            out = asyrp_loss(clip, x_src, decode_from(model, x0_edit), decode_from(model, x0_plain),
                                             direction, text_cos, clip_weight=cfg.clip_weight, l1_weight=cfg.l1_weight)
                            out["loss"].backward()
                            opt.step()
                            if not torch.isfinite(out["loss"]):
                                raise FloatingPointError(f"non-finite Asyrp loss at epoch {epoch}, t = {t}")
                            x_edit = (sqrt(a_prev) * x0_edit + sqrt(1.0 - a_prev) * eps_orig).detach()
                            x_plain = sqrt(a_prev) * x0_plain + sqrt(1.0 - a_prev) * eps_plain
                            for k in terms:
                                terms[k] += float(out[k].detach()) / len(ts)
                    history.append({"epoch": epoch, "batch": b, "lr": opt.param_groups[0]["lr"], **terms})
                    bar.set_postfix(loss=f"{terms['loss']:.3f}", dir=f"{terms['direction']:.3f}",
                                    l1=f"{terms['l1']:.3f}")
                    bar.update(1)
                lr_sched.step()
        finally:
            bar.close()
            model.train(was_training)
    meta = {"config": asdict(cfg), "timesteps": ts, "text_cosine": text_cos, "n_images": int(images.shape[0]),
            "source": list(source) if not isinstance(source, str) else [source],
            "target": list(target) if not isinstance(target, str) else [target]}
    return AsyrpResult(f_t.eval(), history, meta)
