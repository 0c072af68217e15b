"""LoRA adapters (peft) on a UNet's own layers, for every fine-tuning method
(``train.adapter``; docs/LORA.md).

:func:`add_lora` freezes the base UNet's own parameters and adds LoRA to the
target layers through peft, as diffusers' training examples do: on a model
with diffusers' ``PeftAdapterMixin`` (``UNet2DConditionModel``)
``unet.add_adapter(LoraConfig(...))``; a ``UNet2DModel`` has no such mixin in
diffusers 0.42, so ``inject_adapter_in_model(LoraConfig(...), unet)``. Both
put the same peft ``LoraLayer`` in place of each target layer, with
``init_lora_weights="gaussian"`` (A ~ N(0, 1/r), B = 0: the model starts as
the source exactly), seeded by the run's seed. In an ``AdaptedUNet`` the LoRA
goes into its UNet only: the modules a method added (A3FT's adapters, ANL's
and TAN's modules) stay as the method left them.

A method's forward hook on a layer that LoRA wraps (A3FT's pre-hook on each
attention's ``to_out[0]``) moves to the LoRA layer, so that the LoRA branch
sees the input the base layer sees and the merged layer computes what the
trained pair did; it moves back when the LoRA layer is taken out.

A method that trains some layers only may keep the LoRA there
(:func:`limit_lora`: ``attn`` on a text-to-image UNet, Custom Diffusion's
cross-attention layers): :func:`add_lora` then targets the layers that match
``target_modules`` inside those modules, by their full names.

:class:`FrozenBaseView` is the model with its adapters disabled: the source
model, exactly, without a second copy of its weights (SDFT's teacher).
:func:`merged_copy` folds the LoRA into the base weights for saving, in a copy
that shares every tensor it does not change (the base weights may be the
source model's own); :func:`remove_lora` takes the LoRA layers out again.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from diffusers.loaders.peft import PeftAdapterMixin
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import get_peft_model_state_dict
from torch import nn

from .adapted import AdaptedUNet
from .lora_io import LoraWeights, attach_lora_weights
from .wrapping import unwrap

__all__ = ["DEFAULT_RANK", "DEFAULT_TARGET_MODULES", "FrozenBaseView", "LoraSpec", "adaptable_names", "add_lora",
           "LoraScope", "base_unet", "has_lora", "limit_lora", "lora_layers", "lora_parameters", "merged_copy",
           "remove_lora", "scope_problems", "target_problems"]

#: The defaults of diffusers' LoRA training examples: examples/text_to_image/train_text_to_image_lora.py
#: (``--rank`` 4; ``LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
#: target_modules=["to_k", "to_q", "to_v", "to_out.0"])``) and examples/dreambooth/train_dreambooth_lora.py
#: (``--lora_dropout`` 0.0), huggingface/diffusers at 58eb52c.
DEFAULT_RANK = 4
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
#: The layer types peft's LoRA adapts (the others raise in peft).
ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
#: The attributes of a module that hold its forward hooks (moved with a wrapped layer).
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
#: The attribute of a UNet that holds its :class:`LoraScope` (set by :func:`limit_lora`).
_SCOPE = "lora_scope"


@dataclass(frozen=True)
class LoraSpec:
    """``train.adapter`` of type ``lora``: rank r, alpha (the update is scaled
    by alpha / r; None: alpha = r), dropout on the LoRA branch's input and the
    target layers (peft's matching: a module whose name is, or ends with
    ``.`` +, a target)."""

    rank: int = DEFAULT_RANK
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive integer (the LoRA matrices' inner size), got {self.rank!r}")
        alpha = self.alpha
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                                  or not math.isfinite(alpha) or alpha <= 0):
            raise ValueError(f"alpha must be a positive number or null (= rank), got {alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        targets = self.target_modules
        if isinstance(targets, str) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"target_modules must be a non-empty list of layer names, got {targets!r}")
        object.__setattr__(self, "target_modules", tuple(targets))

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def config(self) -> LoraConfig:
        return LoraConfig(r=self.rank, lora_alpha=self.lora_alpha, lora_dropout=float(self.dropout),
                          init_lora_weights="gaussian", target_modules=list(self.target_modules))

    def describe(self) -> dict[str, Any]:
        return {"type": "lora", "rank": self.rank, "alpha": self.lora_alpha, "dropout": float(self.dropout),
                "target_modules": list(self.target_modules)}


def base_unet(model: nn.Module) -> nn.Module:
    """The UNet whose own layers LoRA adapts: the model, or the UNet inside an ``AdaptedUNet``."""
    model = unwrap(model)
    return model.unet if isinstance(model, AdaptedUNet) else model


@dataclass(frozen=True)
class LoraScope:
    """Where a method lets LoRA go: the modules ``names`` (and the layers
    inside them); ``why`` says which they are, for the error raised when no
    target lies there."""

    names: tuple[str, ...]
    why: str

    def holds(self, name: str) -> bool:
        return any(name == n or name.startswith(n + ".") for n in self.names)


def limit_lora(unet: nn.Module, names: list[str] | tuple[str, ...], why: str) -> nn.Module:
    """Let :func:`add_lora` put LoRA only inside the modules ``names`` of
    ``unet`` (in place; returns ``unet``): the layers the method trains, so
    that the LoRA replaces their training and nothing more."""
    object.__setattr__(unet, _SCOPE, LoraScope(tuple(names), why))  # a plain attribute, like the attached parts
    return unet


def adaptable_names(unet: nn.Module, within: Callable[[str], bool] | None = None) -> list[str]:
    """The short names of the layers LoRA can adapt (``to_q``, ``conv1``, ``to_out.0`` ...), sorted;
    with ``within``, of those whose full name it accepts."""
    names = set()
    for name, module in unet.named_modules():
        if isinstance(module, ADAPTABLE) and name and (within is None or within(name)):
            parts = name.split(".")
            names.add(".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1])
    return sorted(names)


def target_problems(unet: nn.Module, target_modules: tuple[str, ...] | list[str]) -> list[str]:
    """Why each target would not work on ``unet`` (it matches no module, or
    a layer LoRA cannot adapt); empty when all do. ``unet`` may live on the meta device."""
    named = [(name, m) for name, m in unet.named_modules() if name]
    problems = []
    for target in target_modules:
        config = LoraConfig(target_modules=[target])
        hits = [(name, m) for name, m in named if check_target_module_exists(config, name)]
        if not hits:
            problems.append(f"{target!r} matches no module of the model")
            continue
        bad = [(name, m) for name, m in hits if not isinstance(m, ADAPTABLE)]
        if bad:
            problems.append(f"{target!r} matches {bad[0][0]} ({type(bad[0][1]).__name__}), which LoRA cannot adapt "
                            "(peft adapts Linear, Conv and Embedding layers)")
    return problems


def lora_layers(model: nn.Module) -> list[tuple[str, BaseTunerLayer]]:
    """The peft LoRA layers in ``model``, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def has_lora(model: nn.Module) -> bool:
    return bool(lora_layers(model))


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA layers' own parameters (A and B), not the base layers' they wrap."""
    return [p for _, layer in lora_layers(model) for name, p in layer.named_parameters()
            if not name.startswith("base_layer.")]


def add_lora(model: nn.Module, spec: LoraSpec, seed: int, where: str = "target_modules") -> nn.Module:
    """Freeze the base UNet of ``model`` and add LoRA to its target layers
    (in place; returns ``model``). ``where`` names the setting in the error
    raised when a target does not work."""
    unet = base_unet(model)
    problems = target_problems(unet, spec.target_modules)
    if problems:
        raise ValueError(f"{where}: {'; '.join(problems)}. Layers LoRA can adapt in this model: "
                         f"{', '.join(adaptable_names(unet))}")
    config = _scoped_config(unet, spec, where)
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # the gaussian init, reproducible, leaving the caller's stream alone
        torch.manual_seed(seed)
        if isinstance(unet, PeftAdapterMixin):
            unet.add_adapter(config)
        else:
            inject_adapter_in_model(config, unet)
    for _, layer in lora_layers(unet):
        _move_hooks(layer.get_base_layer(), layer)
    return model


def _scoped_config(unet: nn.Module, spec: LoraSpec, where: str) -> LoraConfig:
    """``spec``'s LoraConfig; on a UNet with a :class:`LoraScope`, targeting
    by full name the layers inside the scope that ``target_modules`` matches."""
    config = spec.config()
    scope = getattr(unet, _SCOPE, None)
    if not isinstance(scope, LoraScope):
        return config
    names = _scoped_names(unet, scope, config)
    if not names:
        raise ValueError(_scope_message(unet, scope, spec, where))
    return dataclasses.replace(config, target_modules=names)


def _scoped_names(unet: nn.Module, scope: LoraScope, config: LoraConfig) -> list[str]:
    return [name for name, m in unet.named_modules() if name and scope.holds(name) and isinstance(m, ADAPTABLE)
            and check_target_module_exists(config, name)]


def _scope_message(unet: nn.Module, scope: LoraScope, spec: LoraSpec, where: str) -> str:
    return (f"{where}: {scope.why}, and its LoRA goes into those layers only; none of "
            f"{list(spec.target_modules)} is one of them. Layers LoRA can adapt there: "
            f"{', '.join(adaptable_names(unet, scope.holds))}")


def scope_problems(unet: nn.Module, spec: LoraSpec, where: str) -> list[str]:
    """Why ``spec`` would put no LoRA inside the :class:`LoraScope` a method set
    on ``unet`` (:func:`limit_lora`); empty when it does or there is no scope.
    ``unet`` may live on the meta device (the pre-run check's)."""
    scope = getattr(unet, _SCOPE, None)
    if not isinstance(scope, LoraScope) or _scoped_names(unet, scope, spec.config()):
        return []
    return [_scope_message(unet, scope, spec, where)]


def _move_hooks(source: nn.Module, target: nn.Module) -> None:
    """Move ``source``'s forward hooks onto ``target`` (they keep their order and their removal handles' ids)."""
    for name in _HOOK_DICTS:
        hooks = getattr(source, name, None)
        if hooks:
            getattr(target, name).update(hooks)
            hooks.clear()


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Inside the block ``model`` computes without its LoRA branches (peft's
    ``enable_adapters(False)`` on each LoRA layer); they are back after."""
    layers = [layer for _, layer in lora_layers(model)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


class FrozenBaseView(nn.Module):
    """``model`` with its LoRA adapters disabled: the model it started from,
    exactly, without a copy of its weights (SDFT's teacher with LoRA).

    ``model`` is held outside this module's tree (a plain attribute), so what
    ``train()`` does to a teacher (``.to(device).eval().requires_grad_(False)``)
    leaves the trained model as it is. Each call runs ``model`` without
    gradients, in eval mode, with the adapters disabled, in full precision
    (outside the autocast accelerate wraps a mixed-precision student's forward
    in), and puts its modules' modes and adapters back. Other attributes (``config``, the scheduler
    config, the latent codec, the class label) are ``model``'s."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)

    @property
    def model(self) -> nn.Module:
        return self.__dict__["_model"]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        model = self.model
        modes = [(m, m.training) for m in model.modules()]
        # accelerate's mixed precision puts the student's forward under autocast and keeps the
        # original as _original_forward: the source model ran in full precision, so the view does
        patched = model.__dict__.get("forward") if "_original_forward" in model.__dict__ else None
        model.eval()
        try:
            if patched is not None:
                model.forward = model.__dict__["_original_forward"]
            with torch.no_grad(), adapters_disabled(model):
                return model(*args, **kwargs)
        finally:
            if patched is not None:
                model.forward = patched
            for m, mode in modes:
                m.training = mode

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("_model")
            if model is None or name.startswith("__"):
                raise
            return getattr(model, name)


def _lora_weights(model: nn.Module) -> LoraWeights:
    unet = base_unet(model)
    config = unet.peft_config["default"]
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()}
    return LoraWeights("diffusers" if isinstance(unet, PeftAdapterMixin) else "peft", copy.deepcopy(config), state)


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every LoRA layer folded into its base layer
    (W + (alpha / r) B A, peft's ``get_delta_weight``) and replaced by it, and
    its LoRA weights attached for saving (``lora_io.write_lora``). The copy
    shares every parameter it does not change with ``model``: only the merged
    layers get new weight tensors, so merging never writes into a weight that
    the source model, the trained model or its EMA share."""
    weights = _lora_weights(model)
    out = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    unet = base_unet(out)
    with torch.no_grad():
        for _, layer in lora_layers(unet):
            base = layer.get_base_layer()
            delta = sum(layer.get_delta_weight(name) for name in layer.active_adapters)
            base.weight = nn.Parameter(base.weight.detach() + delta.to(base.weight.dtype), requires_grad=False)
    _take_out(unet)
    return attach_lora_weights(out, weights)


def remove_lora(model: nn.Module) -> nn.Module:
    """Take the LoRA layers out of ``model`` (in place, unmerged): each target
    layer is its own base layer again, with its hooks."""
    _take_out(base_unet(model))
    return model


def _take_out(unet: nn.Module) -> None:
    for name, layer in lora_layers(unet):
        base = layer.get_base_layer()
        _move_hooks(layer, base)
        parent, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent) if parent else unet, child, base)
    for attr in ("peft_config", "_hf_peft_config_loaded"):  # what peft and diffusers record on the model
        unet.__dict__.pop(attr, None)
