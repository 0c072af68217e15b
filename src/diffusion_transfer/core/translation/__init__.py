"""Domain translation with diffusion models: each method is its own module
plugged into the shared samplers through their ``post_step`` hook.

- :func:`sdedit` perturb to t0, denoise with the target model;
- :func:`ilvr` low-frequency replacement towards the reference;
- :func:`egsde` energy-guided ancestral sampling (domain classifier features
  for realism, a low-pass filter for faithfulness);
- :func:`ddib` DDIM inversion with the source model, generation with the target.

ILVR and EGSDE take ``variant="paper" | "authors_code"`` (:mod:`.variants`);
their low-pass filters live in :mod:`.resizer`. :mod:`.registry` names each
translator with its label, its parameter block and its translate-stage call.
"""

from diffusion_transfer.core.translation.common import low_pass, perturb, reverse, start_timestep
from diffusion_transfer.core.translation.ddib import ddib
from diffusion_transfer.core.translation.egsde import EGSDEGuidance, egsde, feature_cosine
from diffusion_transfer.core.translation.ilvr import ILVRRefinement, ilvr
from diffusion_transfer.core.translation.registry import TRANSLATORS, translator
from diffusion_transfer.core.translation.resizer import LOW_PASS_FILTERS
from diffusion_transfer.core.translation.sdedit import sdedit
from diffusion_transfer.core.translation.variants import EGSDE_VARIANTS, ILVR_VARIANTS, resolve_options

__all__ = [
    "TRANSLATORS",
    "EGSDE_VARIANTS",
    "ILVR_VARIANTS",
    "LOW_PASS_FILTERS",
    "EGSDEGuidance",
    "ILVRRefinement",
    "ddib",
    "egsde",
    "feature_cosine",
    "ilvr",
    "low_pass",
    "perturb",
    "resolve_options",
    "reverse",
    "sdedit",
    "start_timestep",
    "translator",
]
