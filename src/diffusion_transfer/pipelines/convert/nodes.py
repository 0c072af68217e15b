"""``convert_source``: a guided-diffusion (ADM) checkpoint -> the diffusers
``UNet2DModel`` folder that ``source_model`` reads (conf/paper:
``data/00_weights/ffhq_p2.pt`` -> ``data/paper/06_models/ffhq_p2_diffusers``).
The same conversion is the ``dt-convert-adm`` command."""

from __future__ import annotations

from diffusion_transfer.core.models.adm import PRESETS, ADMConfig, convert_adm_checkpoint
from diffusion_transfer.project.schema import ConvertParams


def convert_source(convert: ConvertParams):
    if convert.preset not in PRESETS:
        raise ValueError(f"convert_source.preset must be one of {sorted(PRESETS)}, got {convert.preset!r}")
    cfg = ADMConfig(**{**PRESETS[convert.preset].model_dump(), **convert.overrides})
    return convert_adm_checkpoint(convert.checkpoint, cfg)
