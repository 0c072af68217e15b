"""The one registry of translators: each name, its label in the papers'
tables, its parameter block under ``translation`` and the function the
translate stage calls on each batch. The translate node, the parameter schema
and the tables read the names from here, in this order (SDFT Table 1's)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffusion_transfer.core.translation.common import TranslationBatch, TranslatorParams
from diffusion_transfer.core.translation.ddib import DDIBParams, translate_ddib
from diffusion_transfer.core.translation.egsde import EGSDEParams, translate_egsde
from diffusion_transfer.core.translation.ilvr import ILVRParams, translate_ilvr
from diffusion_transfer.core.translation.sdedit import SDEditParams, translate_sdedit

__all__ = ["TRANSLATORS", "TranslatorInfo", "translator", "translator_label"]


@dataclass(frozen=True)
class TranslatorInfo:
    name: str
    label: str
    params: type[TranslatorParams]
    run: Callable[[TranslatorParams, TranslationBatch], torch.Tensor]
    #: a null ``t0`` in its block means the shared ``translation.t0``
    shares_t0: bool = False
    #: its low-pass ``factor`` must divide the image size
    low_pass: bool = False
    #: the implementation options its ``variant`` sets (:mod:`.variants`)
    variant_options: tuple[str, ...] = ()


TRANSLATORS: dict[str, TranslatorInfo] = {info.name: info for info in (
    TranslatorInfo("sdedit", "SDEdit", SDEditParams, translate_sdedit, shares_t0=True),
    TranslatorInfo("ilvr", "ILVR", ILVRParams, translate_ilvr, low_pass=True,
                   variant_options=("filter", "reference_step", "reference_noise", "refine_last")),
    TranslatorInfo("egsde", "EGSDE", EGSDEParams, translate_egsde, shares_t0=True, low_pass=True,
                   variant_options=("filter", "clip_x0", "learned_variance")),
    TranslatorInfo("ddib", "DDIB", DDIBParams, translate_ddib),
)}


def translator(name: str) -> TranslatorInfo:
    """The translator ``name``; an unknown name raises ``ValueError`` naming it."""
    if name not in TRANSLATORS:
        raise ValueError(f"unknown translator {name!r}; known translators: {list(TRANSLATORS)}")
    return TRANSLATORS[name]


def translator_label(name: str) -> str:
    """The papers' spelling of a translator's name; any other name as it is."""
    return TRANSLATORS[name].label if name in TRANSLATORS else name
