"""The one registry of fine-tuning methods: each name, how it is built, and
the flags the pipelines need (a conditional method trains and samples with a
CLIP embedding per image; a guided one trains with the noisy domain
classifier). Pipelines, parameter validation and compare tables read the
names from here, in this order (the order of the papers' tables). The
adapters any method can train in place of the base UNet's own layers
(``train.adapter.type``) are listed here too (:data:`ADAPTER_TYPES`)."""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..models.lora import LoraSpec
from ..schedule import NoiseSchedule
from .a3ft import CROSS_ATTENTION, prepare_a3ft, prepare_attn
from .anl import prepare_anl
from .base import Method, check_choice, check_float
from .dreambooth import PriorPreservationLoss, class_image_settings
from .naive import DenoisingLoss
from .sdft import SDFT_PAPER_DEFAULTS, SDFTLoss
from .tan import TANLoss, prepare_tan

__all__ = ["ADAPTER_TYPES", "CLASS_IMAGE_KEYS", "METHODS", "MethodInfo", "build_method", "expand_preset",
           "method_names", "methods_for", "run_supports_text", "text_to_image_methods"]


def _build_scratch(params: dict[str, Any], schedule: NoiseSchedule) -> Method:
    return Method("scratch", DenoisingLoss(schedule, **params), needs_teacher=False, init="random")


def _build_naive(params: dict[str, Any], schedule: NoiseSchedule) -> Method:
    return Method("naive", DenoisingLoss(schedule, **params), needs_teacher=False, init="source")


def _build_sdft(params: dict[str, Any], schedule: NoiseSchedule) -> Method:
    return Method("sdft", SDFTLoss.from_params(schedule, params), needs_teacher=True, init="source")


def _build_dreambooth(params: dict[str, Any], schedule: NoiseSchedule) -> Method:
    class_image_settings(**_pop_keys(params, CLASS_IMAGE_KEYS))  # checked here; the pipeline generates them
    return Method("dreambooth", PriorPreservationLoss(schedule, **params), needs_teacher=False, init="source",
                  needs_class_images=True)


#: DreamBooth's keys that say how its class images are made, not how it trains.
CLASS_IMAGE_KEYS = ("class_prompt", "num_class_images", "class_images")


def _pop_keys(params: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: params.pop(k) for k in keys if k in params}


def _build_attn(params: dict[str, Any], schedule: NoiseSchedule) -> Method:
    # cross_attention: which cross-attention layers train on a text-to-image model (Custom Diffusion), checked now
    which = check_choice("cross_attention", params.pop("cross_attention", "kv"), tuple(CROSS_ATTENTION))
    loss = DenoisingLoss(schedule, **params)
    return Method("attn", loss, needs_teacher=False, init="source", prepare=lambda unet: prepare_attn(unet, which))


def _build_a3ft(params: dict[str, Any], schedule: NoiseSchedule) -> Method:
    adapter = _pop_keys(params, ("scaling_hidden",))
    hidden = adapter.get("scaling_hidden", 64)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"scaling_hidden must be a positive int, got {hidden!r}")
    loss = DenoisingLoss(schedule, **params)
    return Method("a3ft", loss, needs_teacher=False, init="source", prepare=lambda unet: prepare_a3ft(unet, **adapter))


def _anl_builder(name: str, conditional: bool = True, tune_unet: bool = False):
    """ANL (conditional or not) and its CLIP-conditioned Tuning-All baseline."""
    def build(params: dict[str, Any], schedule: NoiseSchedule) -> Method:
        adapter = _pop_keys(params, ("hidden_mult",))
        check_float("hidden_mult", adapter.get("hidden_mult", 1.0), minimum=1e-6)
        loss = DenoisingLoss(schedule, **params)
        if not conditional:
            return Method(name, loss, needs_teacher=False, init="source",
                          prepare=lambda unet: prepare_anl(unet, None, **adapter))
        return Method(name, loss, needs_teacher=False, init="source", conditional=True,
                      prepare=lambda unet, dim: prepare_anl(unet, dim, tune_unet=tune_unet, **adapter))
    return build


def _build_tan(params: dict[str, Any], schedule: NoiseSchedule) -> Method:
    adapter = _pop_keys(params, ("rank",))
    rank = adapter.get("rank", 8)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    return Method("tan", TANLoss.from_params(schedule, params), needs_teacher=False, init="source",
                  prepare=lambda unet: prepare_tan(unet, **adapter), needs_classifier=True)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    build: Callable[[dict[str, Any], NoiseSchedule], Method]
    #: trains and samples with a CLIP image embedding per image (ANL)
    conditional: bool = False
    #: trains with the dataset's noisy domain classifier (TAN)
    guided: bool = False
    #: named hyperparameter sets from the papers (``preset: <name>``)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: its loss class and the keys its builder takes besides the loss's (adapter sizes, ``variant``):
    #: the hyperparameters it accepts, for the closest match to a misspelt one
    loss: type = DenoisingLoss
    own_keys: tuple[str, ...] = ()
    #: trains a text-to-image (Stable Diffusion layout) source on its captions' hidden states (issue 34)
    text_to_image: bool = False
    #: trains nothing else: no run of it is made for a pixel or latent source without text (DreamBooth)
    text_to_image_only: bool = False
    #: trains with class images the source model samples once from a class prompt (DreamBooth)
    class_images: bool = False

    def accepted(self) -> set[str]:
        names = inspect.signature(self.loss.__init__).parameters
        return ({n for n in names if n not in ("self", "schedule", "classifier")} | set(self.own_keys)
                | ({"preset"} if self.presets else set()))


METHODS: dict[str, MethodInfo] = {info.name: info for info in (
    MethodInfo("scratch", _build_scratch),
    MethodInfo("naive", _build_naive, text_to_image=True),
    MethodInfo("sdft", _build_sdft, presets=SDFT_PAPER_DEFAULTS, loss=SDFTLoss, own_keys=("variant",),
               text_to_image=True),
    MethodInfo("attn", _build_attn, own_keys=("cross_attention",), text_to_image=True),
    MethodInfo("a3ft", _build_a3ft, own_keys=("scaling_hidden",)),
    MethodInfo("anl", _anl_builder("anl"), conditional=True, own_keys=("hidden_mult",)),
    MethodInfo("anl_uncond", _anl_builder("anl_uncond", conditional=False), own_keys=("hidden_mult",)),
    MethodInfo("naive_clip", _anl_builder("naive_clip", tune_unet=True), conditional=True, own_keys=("hidden_mult",)),
    MethodInfo("tan", _build_tan, guided=True, loss=TANLoss, own_keys=("rank", "variant")),
    MethodInfo("dreambooth", _build_dreambooth, loss=PriorPreservationLoss, own_keys=CLASS_IMAGE_KEYS,
               text_to_image=True, text_to_image_only=True, class_images=True),
)}


#: ``train.adapter.type`` -> the core spec its settings build (docs/LORA.md).
ADAPTER_TYPES: dict[str, type] = {"lora": LoraSpec}


_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")


def method_names() -> list[str]:
    """Every method, in the order of the comparison tables."""
    return list(METHODS)


def text_to_image_methods() -> list[str]:
    """The methods that train a text-to-image source model, in table order."""
    return [name for name, info in METHODS.items() if info.text_to_image]


def methods_for(text_to_image: bool) -> list[str]:
    """The methods that train a source of this kind, in table order (a text-to-image
    source gets every method's run, so that the pre-run check names the ones it refuses)."""
    return [name for name, info in METHODS.items() if text_to_image or not info.text_to_image_only]


def run_supports_text(name: str) -> bool:
    return name in METHODS and METHODS[name].text_to_image


def build_method(name: str, params: dict[str, Any] | None, schedule: NoiseSchedule) -> Method:
    """Build the method ``name`` from its hyperparameters ``params``.

    ``preset: <p>`` is expanded here for callers of the core alone. Unknown
    names and unknown or invalid parameters raise ``ValueError`` naming
    them, before any compute."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {method_names()}")
    params = expand_preset(name, params or {})  # a no-op for a run resolved from conf (already expanded)
    try:
        return METHODS[name].build(params, schedule)
    except TypeError as exc:  # unexpected keyword argument
        unknown = _UNEXPECTED.search(str(exc))
        hint = ""
        if unknown:
            match = difflib.get_close_matches(unknown.group(1), sorted(METHODS[name].accepted()), n=1, cutoff=0.6)
            hint = f"; did you mean '{match[0]}'?" if match else f"; it takes {sorted(METHODS[name].accepted())}"
        raise ValueError(f"invalid parameters for method {name!r}: {exc}{hint}") from exc


def expand_preset(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with ``preset: <p>`` replaced by that preset's values
    (e.g. SDFT Table 5's AAHQ column); the other keys of ``params`` win."""
    params = dict(params)
    preset = params.pop("preset", None)
    if preset is None:
        return params
    presets = METHODS[name].presets if name in METHODS else {}
    if preset not in presets:
        raise ValueError(f"{name} preset must be one of {sorted(presets)}, got {preset!r}")
    return {**presets[preset], **params}
