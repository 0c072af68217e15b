"""Fine-tuning methods as EDM-style loss callables (see base.py)."""

from .base import Method, build_method, method_names, timestep_weight
from .naive import DenoisingLoss
from .sdft import SDFT_PAPER_DEFAULTS, SDFT_VARIANTS, SDFTLoss

__all__ = [
    "SDFT_PAPER_DEFAULTS",
    "SDFT_VARIANTS",
    "DenoisingLoss",
    "Method",
    "SDFTLoss",
    "build_method",
    "method_names",
    "timestep_weight",
]
