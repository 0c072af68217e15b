"""``variant: paper | authors_code`` for ILVR and EGSDE, as SDFT has one.

A variant is a named set of implementation options; each option is also its
own parameter, and an explicit value wins over the variant's. ``paper`` is
what the paper writes (and the project ran before the options existed);
``authors_code`` is what the released code does (docs/DEVIATIONS.md lists the
sources, file by file).

ILVR (jychoi118/ilvr_adm):
  filter           block | cubic | linear   the low-pass filter phi_N (:mod:`.resizer`); released: cubic
  reference_step   t_prev | t               the reference is noised to the step's output time t-1
                                            (Algorithm 1) or to its input time t (released)
  reference_noise  fixed | fresh            one noise per image for every step (Algorithm 1) or a
                                            fresh draw at every step (released)
  refine_last      true | false             refine the last step's output x_0 too (Algorithm 1 runs to
                                            t = 1) or not (released: ``if i > range_t``, range_t = 0)

EGSDE (ML-GSAI/EGSDE):
  filter           block | cubic | linear   the faithfulness energy's low-pass filter; released: linear
  clip_x0          true | false             clip the x_0 prediction inside the ancestral mean; released:
                                            unclipped, mean = (y - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)
  learned_variance true | false             a learned-variance model's own variance; released: the
                                            fixed beta-tilde (``var_type: fixedsmall``), the variance
                                            channels are split off and dropped
"""

from __future__ import annotations

from typing import Any

from diffusion_transfer.core.translation.resizer import LOW_PASS_FILTERS

VARIANTS = ("paper", "authors_code")

ILVR_VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"filter": "block", "reference_step": "t_prev", "reference_noise": "fixed", "refine_last": True},
    "authors_code": {"filter": "cubic", "reference_step": "t", "reference_noise": "fresh", "refine_last": False},
}

EGSDE_VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"filter": "block", "clip_x0": True, "learned_variance": True},
    "authors_code": {"filter": "linear", "clip_x0": False, "learned_variance": False},
}

_CHOICES: dict[str, tuple[Any, ...]] = {
    "filter": LOW_PASS_FILTERS,
    "reference_step": ("t_prev", "t"),
    "reference_noise": ("fixed", "fresh"),
    "refine_last": (True, False),
    "clip_x0": (True, False),
    "learned_variance": (True, False),
}

_TABLES = {"ilvr": ILVR_VARIANTS, "egsde": EGSDE_VARIANTS}


def resolve_options(method: str, variant: str = "paper", **overrides: Any) -> dict[str, Any]:
    """The options of ``method`` ("ilvr" | "egsde") under ``variant``, with
    every non-None override winning. Unknown names and values raise
    ``ValueError`` naming the option."""
    table = _TABLES[method]
    if variant not in table:
        raise ValueError(f"{method} variant must be one of {list(table)}, got {variant!r}")
    options = dict(table[variant])
    for key, value in overrides.items():
        if key not in options:
            raise ValueError(f"unknown {method} option {key!r}; options: {sorted(options)}")
        if value is None:
            continue
        if value not in _CHOICES[key] or (isinstance(value, bool) != isinstance(_CHOICES[key][0], bool)):
            raise ValueError(f"{method} option {key} must be one of {list(_CHOICES[key])}, got {value!r}")
        options[key] = value
    return options
