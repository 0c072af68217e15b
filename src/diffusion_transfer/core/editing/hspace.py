"""Asyrp's h-space: the output of the UNet's bottleneck (``mid_block``).

Kwon et al. ("Diffusion models already have a semantic latent space", ICLR
2023) call the deepest feature map of the UNet h-space and edit it by adding
Delta h = f_t(h) there. Their code (kwonminki/Asyrp_official,
``models/ddpm/diffusion.py``) rewrites the network's forward to take h after
the middle block; here a PyTorch forward hook on a diffusers
``UNet2DModel``'s ``mid_block`` reads h and, while an edit is set, returns
``h + scale * delta(h, temb)`` in its place, so no diffusers code is copied
and the same hook works on a plain UNet and on an
:class:`~diffusion_transfer.core.models.adapted.AdaptedUNet` (whose added
modules hook the UNet's own blocks: registered later, this hook sees their
output). A second hook on ``time_embedding`` records the UNet's time
embedding, which Asyrp's f_t is conditioned on (its ``DeltaBlock`` takes the
model's ``temb``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

DeltaFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def find_unet(model: nn.Module) -> nn.Module:
    """The ``UNet2DModel`` inside ``model``: the model itself, an
    ``AdaptedUNet``'s ``.unet``, or the first submodule with a ``mid_block``.
    Raises ``ValueError`` naming ``model`` when there is none."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch module (a UNet2DModel or AdaptedUNet), got {type(model).__name__}")
    inner = getattr(model, "unet", None)
    if isinstance(inner, nn.Module) and getattr(inner, "mid_block", None) is not None:
        return inner
    for module in model.modules():
        if getattr(module, "mid_block", None) is not None and hasattr(module, "up_blocks"):
            return module
    raise ValueError(f"model ({type(model).__name__}) has no UNet with a mid_block: Asyrp's h-space is the "
                     "output of the UNet's middle block")


class HSpace:
    """Hooks on a UNet's ``mid_block`` (h) and ``time_embedding`` (temb).

    After every forward ``self.h`` holds the middle block's output as the UNet
    computed it (before any edit) and ``self.temb`` the time embedding of
    that call. With ``self.delta`` set (a callable ``delta(h, temb)``), the
    middle block's output becomes ``h + self.scale * delta(h, temb)``, which
    the up path then decodes; ``self.delta_h`` keeps the last Delta h. Use as
    a context manager, or call :meth:`remove`.
    """

    def __init__(self, model: nn.Module) -> None:
        self.unet = find_unet(model)
        self.h: torch.Tensor | None = None
        self.temb: torch.Tensor | None = None
        self.delta_h: torch.Tensor | None = None
        self.delta: DeltaFn | None = None
        self.scale: float = 1.0
        handles = [self.unet.mid_block.register_forward_hook(self._on_mid)]
        time_embedding = getattr(self.unet, "time_embedding", None)
        if isinstance(time_embedding, nn.Module):
            handles.append(time_embedding.register_forward_hook(self._on_temb))
        self._handles = handles

    @property
    def channels(self) -> int:
        """Channels of h: the UNet's widest block."""
        return int(self.unet.config.block_out_channels[-1])

    @property
    def temb_channels(self) -> int | None:
        """Width of the UNet's time embedding (``None`` when it has none)."""
        te = getattr(self.unet, "time_embedding", None)
        lin = getattr(te, "linear_2", None)
        return int(lin.out_features) if isinstance(lin, nn.Linear) else None

    def _on_temb(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.temb = output

    def _on_mid(self, module: nn.Module, args: Any, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output
        self.h = h
        if self.delta is None:
            self.delta_h = None
            return None
        delta_h = self.delta(h, self.temb)
        if delta_h.shape != h.shape:
            raise ValueError(f"delta(h, temb) must be shaped like h {tuple(h.shape)}, got {tuple(delta_h.shape)}")
        self.delta_h = delta_h
        edited = h + self.scale * delta_h.to(h.dtype)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    def editing(self, delta: DeltaFn | None, scale: float = 1.0) -> "_Editing":
        """Context manager: forwards inside it add ``scale * delta(h, temb)`` to h."""
        return _Editing(self, delta, scale)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "HSpace":
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.remove()
        return False


class _Editing:
    def __init__(self, space: HSpace, delta: DeltaFn | None, scale: float) -> None:
        self.space, self.delta, self.scale = space, delta, float(scale)

    def __enter__(self) -> HSpace:
        self.old = (self.space.delta, self.space.scale)
        self.space.delta, self.space.scale = self.delta, self.scale
        return self.space

    def __exit__(self, *exc: Any) -> bool:
        self.space.delta, self.space.scale = self.old
        return False
