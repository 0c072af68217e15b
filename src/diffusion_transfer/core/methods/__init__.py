"""Fine-tuning methods as EDM-style loss callables (see base.py; names and flags in registry.py)."""

from .base import Method, timestep_weight
from .registry import METHODS, MethodInfo, build_method, expand_preset, method_names
from .naive import DenoisingLoss
from .sdft import SDFT_PAPER_DEFAULTS, SDFT_VARIANTS, SDFTLoss

__all__ = [
    "METHODS",
    "MethodInfo",
    "SDFT_PAPER_DEFAULTS",
    "SDFT_VARIANTS",
    "DenoisingLoss",
    "Method",
    "SDFTLoss",
    "build_method",
    "expand_preset",
    "method_names",
    "timestep_weight",
]
