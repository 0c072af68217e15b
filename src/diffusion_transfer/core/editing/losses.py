"""Asyrp's training losses: the directional CLIP loss and the reconstruction
(L1) loss, with the weights of Asyrp_official's ``script_train.sh``.

The directional loss is StyleGAN-NADA's (Gal et al.), as in DiffusionCLIP and
Asyrp (``losses/clip_loss.py``, ``clip_directional_loss``)::

    Delta T = normalise(mean_k (E_T(target_k) - E_T(source_k)))
    Delta I = normalise(E_I(x_edit) - E_I(x_source))
    L_direction = 1 - cos(Delta I, Delta T)

with L2-normalised embeddings E_I, E_T (the CLIP wrappers of this project
return them so). The code averages the text difference over prompt
templates; here the caller passes the paired texts (the templates already
applied, e.g. one pair per gender for the world CLIP). Asyrp then trains on
``-log((2 - L_direction) / 2) = -log((1 + cos) / 2)`` (``diffusion_latent.py``,
"following DiffusionCLIP"), weighted by ``clip_loss_w`` (1.0 in the training
script), plus ``l1_loss_w * cos(E_T(source), E_T(target)) * L1(x0_edit, x0)``
(``l1_loss_w`` 3.0), the L1 weight scaled by how close the two texts are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

#: Asyrp_official script_train.sh: --clip_loss_w 1.0 --l1_loss_w 3.0
CLIP_WEIGHT = 1.0
L1_WEIGHT = 3.0


def _texts(texts: Sequence[str] | str, name: str) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(s, str) and s.strip() for s in texts):
        raise ValueError(f"{name} must be one or more non-empty strings, got {texts!r}")
    return texts


def text_direction(clip: Any, source: Sequence[str] | str, target: Sequence[str] | str) -> torch.Tensor:
    """Delta T, a unit vector (D,): the mean over the paired texts of
    E_T(target_k) - E_T(source_k), normalised. ``source`` and ``target`` are
    paired one to one (or one source for every target)."""
    src, trg = _texts(source, "source"), _texts(target, "target")
    if len(src) == 1 and len(trg) > 1:
        src = src * len(trg)
    if len(src) != len(trg):
        raise ValueError(f"source and target texts must pair up: {len(src)} source vs {len(trg)} target")
    with torch.no_grad():
        e_src = F.normalize(clip.encode_text(src).float(), dim=-1)
        e_trg = F.normalize(clip.encode_text(trg).float(), dim=-1)
    return F.normalize((e_trg - e_src).mean(dim=0), dim=-1)


def text_similarity(clip: Any, source: Sequence[str] | str, target: Sequence[str] | str) -> float:
    """cos(E_T(source), E_T(target)) of the mean text embeddings: Asyrp's
    ``cosine`` that scales the L1 weight."""
    with torch.no_grad():
        e_src = F.normalize(clip.encode_text(_texts(source, "source")).float(), dim=-1).mean(dim=0)
        e_trg = F.normalize(clip.encode_text(_texts(target, "target")).float(), dim=-1).mean(dim=0)
    return float(F.cosine_similarity(e_src, e_trg, dim=0))


def straight_through_clamp(x: torch.Tensor) -> torch.Tensor:
    """Values clamped to [-1, 1], gradient of the identity: the CLIP wrappers
    reject far out-of-range pixels, and unclipped x0 predictions (Asyrp
    does not clip) leave the range early in the reverse process."""
    return x + (x.clamp(-1.0, 1.0) - x).detach()


def directional_loss(clip: Any, x_source: torch.Tensor, x_edit: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Per-image 1 - cos(Delta I, Delta T), shape (B,). Gradients reach
    ``x_edit`` (and ``x_source`` if it requires grad)."""
    e_src = F.normalize(clip.encode_images(straight_through_clamp(x_source)).float(), dim=-1)
    e_edit = F.normalize(clip.encode_images(straight_through_clamp(x_edit)).float(), dim=-1)
    delta_i = e_edit - e_src
    delta_i = delta_i / (delta_i.norm(dim=-1, keepdim=True) + 1e-7)
    return 1.0 - delta_i @ direction.to(delta_i.device, delta_i.dtype)


def clip_objective(direction_loss: torch.Tensor) -> torch.Tensor:
    """Asyrp's training form of the directional loss, -log((2 - L) / 2), averaged."""
    return -torch.log((2.0 - direction_loss).clamp_min(1e-12) / 2.0).mean()


def asyrp_loss(clip: Any, x_source: torch.Tensor, x0_edit: torch.Tensor, x0_plain: torch.Tensor,
               direction: torch.Tensor, text_cos: float, *, clip_weight: float = CLIP_WEIGHT,
               l1_weight: float = L1_WEIGHT) -> dict[str, torch.Tensor]:
    """One training step's loss (``diffusion_latent.py``, ``run_training``):
    ``clip_weight * -log((2 - L_dir(x_source, x0_edit)) / 2) + l1_weight *
    text_cos * L1(x0_edit, x0_plain)``, where x0_edit is the x0 prediction
    with the edited h and x0_plain the unedited process's at the same t.
    Returns ``loss`` and the detached terms ``direction`` (mean L_dir) and
    ``l1``."""
    l_dir = directional_loss(clip, x_source, x0_edit, direction)
    l1 = (x0_edit - x0_plain).abs().mean()
    loss = clip_weight * clip_objective(l_dir) + l1_weight * text_cos * l1
    return {"loss": loss, "direction": l_dir.mean().detach(), "l1": l1.detach()}
