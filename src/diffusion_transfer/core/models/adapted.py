"""A diffusers ``UNet2DModel`` with added, trainable modules (A3FT adapters,
ANL modules), saved as its base weights plus the added modules.

The added modules live in an :class:`Adapter` (an ``nn.Module``) and are
attached to the UNet with PyTorch module hooks, so that no diffusers code is
copied and the UNet's own ``state_dict`` keys stay those of a plain
``UNet2DModel``. Hooks are bound methods of the adapter's modules; a
``copy.deepcopy`` of an :class:`AdaptedUNet` (the EMA copy of the training
loop) re-binds them to the copied modules.

On disk (``save_adapted`` / ``load_adapted``, used by ``save_unet`` and
``load_unet``)::

    folder/adapter.json          {"format": 1, "kind": "a3ft", "config": {...}}
    folder/adapter.safetensors   the adapter's state_dict
    folder/unet/                 the (possibly fine-tuned) UNet2DModel, save_pretrained
"""

from __future__ import annotations

import importlib
import json
from abc import ABCMeta, abstractmethod
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ADAPTER_FILE",
    "ADAPTER_WEIGHTS",
    "Adapter",
    "AdaptedUNet",
    "is_adapted_folder",
    "load_adapted",
    "parameter_counts",
    "register_adapter",
]

ADAPTER_FILE = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
_ADAPTERS: dict[str, type["Adapter"]] = {}
# Modules that define adapters; imported on demand when a saved model is loaded.
_ADAPTER_MODULES = (
    "diffusion_transfer.core.methods.a3ft",
    "diffusion_transfer.core.methods.anl",
    "diffusion_transfer.core.methods.tan",
)


def register_adapter(cls: type["Adapter"], kinds: tuple[str, ...] | None = None) -> type["Adapter"]:
    """Make ``load_adapted`` able to rebuild saved adapters of ``kinds``
    (default: ``cls.kind``); usable as a class decorator."""
    for kind in kinds or (cls.kind,):
        _ADAPTERS[kind] = cls
    return cls


class Adapter(nn.Module, metaclass=ABCMeta):
    """Modules added to a UNet. Subclasses set ``kind``, build their modules in
    ``__init__(unet, **config)`` (keeping ``config`` for saving), and hook
    them into the UNet in :meth:`attach`. ``begin``/``end`` bracket one UNet
    forward (set and clear per-call state such as the condition)."""

    kind: str = ""
    needs_condition: bool = False

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)

    @abstractmethod
    def attach(self, unet: nn.Module) -> None:
        """Register the hooks that put this adapter's modules into ``unet``."""

    def begin(self, condition: torch.Tensor | None, batch: int) -> None:
        if self.needs_condition and condition is None:
            raise ValueError(
                f"this {self.kind} model is conditional: call it with condition= (CLIP embeddings, shape "
                f"(B, {self.config.get('condition_dim')})), e.g. through AdaptedUNet.conditioned(...)"
            )
        if not self.needs_condition and condition is not None:
            raise ValueError(f"this {self.kind} model takes no condition")

    def end(self) -> None:
        pass


class AdaptedUNet(nn.Module):
    """``unet`` plus an :class:`Adapter`; called like the UNet, with an
    optional ``condition`` for conditional adapters (ANL)."""

    def __init__(self, unet: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.unet = unet
        self.adapter = adapter
        self._default_condition: torch.Tensor | None = None
        adapter.attach(unet)

    @property
    def config(self):
        return self.unet.config

    @property
    def kind(self) -> str:
        return self.adapter.kind

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, sample: torch.Tensor, timestep, condition: torch.Tensor | None = None, return_dict: bool = True):
        if condition is None:
            condition = self._default_condition
        if condition is not None:
            condition = condition.to(device=sample.device, dtype=sample.dtype)
            if condition.shape[0] == 1 and sample.shape[0] > 1:
                condition = condition.expand(sample.shape[0], *condition.shape[1:])
            if condition.shape[0] != sample.shape[0]:
                raise ValueError(
                    f"condition has batch {condition.shape[0]} but the input has batch {sample.shape[0]}"
                )
        self.adapter.begin(condition, sample.shape[0])
        try:
            return self.unet(sample, timestep, return_dict=return_dict)
        finally:
            self.adapter.end()

    def conditioned(self, condition: torch.Tensor | None):
        """Context manager: calls without ``condition=`` use this one (how the
        samplers, which call ``model(x, t)``, sample a conditional model)."""
        model = self

        class _Ctx:
            def __enter__(self_inner):
                self_inner.old = model._default_condition
                model._default_condition = condition
                return model

            def __exit__(self_inner, *exc):
                model._default_condition = self_inner.old
                return False

        return _Ctx()


def parameter_counts(model: nn.Module, base: nn.Module | None = None) -> dict[str, Any]:
    """Trainable and total parameter counts; shares are relative to the base
    (pretrained) UNet's size, as the papers report them."""
    base = base if base is not None else (model.unet if isinstance(model, AdaptedUNet) else model)
    n_base = sum(p.numel() for p in base.parameters())
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out: dict[str, Any] = {
        "base_parameters": n_base,
        "total_parameters": n_total,
        "trainable_parameters": n_train,
        "trainable_share": n_train / n_base if n_base else 0.0,
    }
    if isinstance(model, AdaptedUNet):
        n_added = sum(p.numel() for p in model.adapter.parameters())
        out["added_parameters"] = n_added
        out["added_share"] = n_added / n_base if n_base else 0.0
    return out


def is_adapted_folder(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / ADAPTER_FILE).is_file()


def _adapter_class(kind: str) -> type[Adapter]:
    if kind not in _ADAPTERS:
        for name in _ADAPTER_MODULES:
            importlib.import_module(name)
    if kind not in _ADAPTERS:
        raise ValueError(f"unknown adapter kind {kind!r}; known: {sorted(_ADAPTERS)}")
    return _ADAPTERS[kind]


def save_adapted(model: AdaptedUNet, folder: Path) -> None:
    """Write ``model`` into the (new, empty) ``folder``; callers make it atomic."""
    from safetensors.torch import save_file

    model.unet.save_pretrained(str(folder / "unet"), safe_serialization=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.adapter.state_dict().items()}
    save_file(state, str(folder / ADAPTER_WEIGHTS))
    (folder / ADAPTER_FILE).write_text(
        json.dumps({"format": 1, "kind": model.kind, "config": model.adapter.config}, indent=2, sort_keys=True)
    )


def load_adapted(folder: str | os.PathLike[str], load_base) -> AdaptedUNet:
    """Rebuild a saved :class:`AdaptedUNet`; ``load_base(path)`` loads the UNet."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / ADAPTER_FILE).read_text())
        kind, config = meta["kind"], dict(meta.get("config", {}))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{str(folder / ADAPTER_FILE)!r} is not a valid adapter description: {exc}") from exc
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"adapted model folder {str(folder)!r} has no {ADAPTER_WEIGHTS}")
    unet = load_base(folder / "unet")
    adapter = _adapter_class(kind)(unet, **config)
    missing, unexpected = adapter.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{str(weights)!r} does not match a {kind} adapter for this UNet "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    return AdaptedUNet(unet, adapter)
