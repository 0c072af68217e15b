"""What an ADM conversion sets besides copied tensors: the table of rescaled
timestep embeddings, and the attention layers whose head count diffusers'
config cannot say.

* improved-diffusion feeds its net ``t * 1000 / T`` (``rescale_timesteps``,
  its default); diffusers' sinusoid has no such scale, so the converted model
  has a ``"learned"`` time embedding whose table row ``t`` is ADM's embedding
  of ``t * 1000 / T``: the same function at every integer t, which is all
  the samplers and losses here use.
* diffusers gives every attention layer ``channels // attention_head_dim``
  heads; improved-diffusion uses 4 heads at every level (widths 96 and 128 in
  the ImageNet-64 model). The converted model records ADM's head count per
  layer in its config (``_adm_attention_heads``, a hidden key that diffusers
  saves and restores) and :func:`apply_attention_heads` sets those layers'
  ``heads``. A folder loaded with plain ``UNet2DModel.from_pretrained`` needs
  ``apply_attention_heads(model)`` afterwards; it is a no-op for other models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .adm_config import ADMConfig

HEADS_KEY = "_adm_attention_heads"
#: Set on a converted model whose ``time_proj.weight`` is ADM's fixed sinusoid table, not a learned one.
FIXED_TABLE_KEY = "_adm_fixed_timestep_table"


def adm_timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """ADM's ``nn.timestep_embedding`` in float32: ``[cos, sin]`` of ``t * exp(-ln(P) i / half)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def generated_tensors(cfg: ADMConfig) -> dict[str, torch.Tensor]:
    """diffusers parameters that come from ``cfg`` rather than from the checkpoint."""
    if cfg.timestep_scale == 1.0:
        return {}
    # As improved-diffusion's _scale_timesteps: t.float() * (1000.0 / T), in float32.
    t = torch.arange(cfg.diffusion_steps).float() * cfg.timestep_scale
    return {"time_proj.weight": adm_timestep_embedding(t, cfg.num_channels)}


def generated_shapes(cfg: ADMConfig) -> dict[str, tuple[int, ...]]:
    """The shapes of :func:`generated_tensors` without computing them."""
    return {} if cfg.timestep_scale == 1.0 else {"time_proj.weight": (cfg.diffusion_steps, cfg.num_channels)}


def apply_attention_heads(model: torch.nn.Module, heads: Mapping[str, int] | None = None) -> torch.nn.Module:
    """Give the attention layers named in ``heads`` (default: the model config's
    ``_adm_attention_heads``) that many heads, and record them in the config.

    diffusers' attention reads ``heads`` at every call (the head width is
    ``inner_dim // heads`` and the softmax scale its inverse square root), so
    this changes the function, not the parameters. Raises ``ValueError`` naming
    the layer when one is missing or its channels are not divisible.
    """
    config = getattr(model, "config", None)
    if heads is None:
        heads = config.get(HEADS_KEY) if isinstance(config, Mapping) else None
    if not heads:
        return model
    modules = dict(model.named_modules())
    for name, count in heads.items():
        attn = modules.get(name)
        inner = getattr(getattr(attn, "to_q", None), "out_features", None)
        if inner is None or count < 1 or inner % count:
            raise ValueError(f"{HEADS_KEY} names {name!r} with {count} heads, but the model has no attention "
                             f"layer there that {count} heads divide; the model folder's config.json does not "
                             "belong to its weights: convert the checkpoint again (dt-convert-adm)")
        attn.heads = attn.sliceable_head_dim = int(count)
        attn.scale = (inner // count) ** -0.5 if attn.scale_qk else 1.0
    if hasattr(model, "register_to_config"):
        model.register_to_config(**{HEADS_KEY: dict(heads)})
    return model


def mark_fixed_timestep_table(model: torch.nn.Module) -> torch.nn.Module:
    """Record that ``time_proj.weight`` is ADM's fixed embedding table, and freeze it."""
    if hasattr(model, "register_to_config"):
        model.register_to_config(**{FIXED_TABLE_KEY: True})
    return freeze_fixed_timestep_table(model)


def freeze_fixed_timestep_table(model: torch.nn.Module) -> torch.nn.Module:
    """Keep a converted model's timestep table out of training: improved-diffusion
    computes it (a sinusoid at ``t * 1000 / T``), it learns nothing there, so
    fine-tuning every parameter must not change it. No-op for other models."""
    config = getattr(model, "config", None)
    if isinstance(config, Mapping) and config.get(FIXED_TABLE_KEY):
        model.time_proj.weight.requires_grad_(False)
    return model


def apply_adm_extras(model: torch.nn.Module) -> torch.nn.Module:
    """After ``UNet2DModel.from_pretrained``: the recorded head counts and the frozen table."""
    return freeze_fixed_timestep_table(apply_attention_heads(model))


def computed_parts_like(student: torch.nn.Module, source: torch.nn.Module) -> torch.nn.Module:
    """A fresh ``student`` built from ``source``'s config (``scratch``) gets what
    ADM computes rather than learns: the recorded head counts and the fixed
    timestep table (copied, frozen). No-op for other models."""
    apply_attention_heads(student)
    config = getattr(student, "config", None)
    if isinstance(config, Mapping) and config.get(FIXED_TABLE_KEY):
        with torch.no_grad():
            student.time_proj.weight.copy_(source.time_proj.weight)
    return freeze_fixed_timestep_table(student)
