"""Convert guided-diffusion / improved-diffusion (ADM) UNet checkpoints to a
diffusers ``UNet2DModel``.

Guided-diffusion's ``UNetModel`` (openai/guided-diffusion ``unet.py``; the
P2-weighting release, jychoi118/P2-weighting, ships its FFHQ model
``ffhq_p2.pt`` in that format), improved-diffusion's (openai/improved-diffusion,
the same net without ``num_head_channels`` / ``resblock_updown`` / the new QKV
order: preset ``improved_imagenet64``) and diffusers' ``UNet2DModel`` compute the
same function once the diffusers model is configured by :func:`adm_unet_config`
(and, where ADM's head width varies between levels or its timesteps are
rescaled, set up by :mod:`.adm_extras`):

* time embedding: ADM's ``timestep_embedding`` is ``[cos, sin]`` with
  frequencies ``exp(-ln(10000) i / half)``, i.e. diffusers' ``Timesteps`` with
  ``flip_sin_to_cos=True, freq_shift=0``; ``time_embed`` = Linear, SiLU,
  Linear = ``TimestepEmbedding``;
* one diffusers down/up block per ``channel_mult`` level; levels whose
  downsampling rate ``ds`` is in ADM's attention rates get ``Attn*Block2D``;
* ``resblock_updown`` (ADM down/upsamples with a ``ResBlock(down/up=True)``,
  avg-pool / nearest) = ``downsample_type/upsample_type="resnet"`` for the
  attention blocks and ``ResnetDownsampleBlock2D`` / ``ResnetUpsampleBlock2D``
  for the others (diffusers' plain ``DownBlock2D`` / ``UpBlock2D`` always
  use a strided / interpolate+conv resampler, which is ADM's *other* option,
  ``resblock_updown=False``);
* ``use_scale_shift_norm`` = ``resnet_time_scale_shift="scale_shift"``
  (``norm(h) * (1 + scale) + shift``, scale first in both);
* ``attn_norm_num_groups=32``: with ``scale_shift`` diffusers would otherwise
  build the *mid-block* attention without its GroupNorm, and ADM has one;
* GroupNorm32: 32 groups, eps 1e-5 everywhere (``norm_eps=1e-5``);
* ``num_classes`` (``label_emb``, an ``nn.Embedding`` added to the time
  embedding after ``time_embed``) = ``num_class_embeds`` with
  ``class_embed_type=None`` (``class_embedding``, added at the same place);
  call the converted model as ``unet(x, t, class_labels=y)``;
* ``rescale_timesteps`` (the net sees ``t * 1000 / T``) = a ``"learned"`` time
  embedding holding ADM's embedding of every rescaled integer t.

Key mapping (ADM key -> diffusers key; every ADM key is used exactly once
and every diffusers parameter is written exactly once):

==========================================  =========================================
``time_embed.0`` / ``time_embed.2``         ``time_embedding.linear_1`` / ``linear_2``
``label_emb`` (class_cond)                  ``class_embedding``
(made, not read: rescale_timesteps)         ``time_proj`` (the timestep table)
``input_blocks.0.0``                        ``conv_in``
``input_blocks.k.0`` (ResBlock)             ``down_blocks.L.resnets.j``
``input_blocks.k.1`` (AttentionBlock)       ``down_blocks.L.attentions.j``
``input_blocks.k.0`` (down ResBlock)        ``down_blocks.L.downsamplers.0``
``input_blocks.k.0.op`` (down conv)         ``down_blocks.L.downsamplers.0.conv``
``middle_block.0`` / ``.1`` / ``.2``        ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``
``output_blocks.k.0`` / ``.1``              ``up_blocks.U.resnets.j`` / ``attentions.j``
``output_blocks.k.{1|2}`` (up ResBlock)     ``up_blocks.U.upsamplers.0``
``output_blocks.k.{1|2}.conv`` (up conv)    ``up_blocks.U.upsamplers.0.conv``
``out.0`` / ``out.2``                       ``conv_norm_out`` / ``conv_out``
==========================================  =========================================

inside a ResBlock: ``in_layers.0`` -> ``norm1``, ``in_layers.2`` -> ``conv1``,
``emb_layers.1`` -> ``time_emb_proj``, ``out_layers.0`` -> ``norm2``,
``out_layers.3`` -> ``conv2``, ``skip_connection`` (1x1 conv, only when the
channel count changes) -> ``conv_shortcut``; inside an AttentionBlock:
``norm`` -> ``group_norm``, ``qkv`` -> ``to_q`` / ``to_k`` / ``to_v``,
``proj_out`` -> ``to_out.0``. Tensors are copied unchanged except:

* ``qkv`` and ``proj_out`` are 1x1 ``Conv1d`` weights ``(O, I, 1)``: the last
  axis is dropped to give ``Linear`` weights ``(O, I)``;
* the ``qkv`` output channels are split into q, k, v. With the *legacy* order
  (``use_new_attention_order=False``, ``QKVAttentionLegacy``) they are laid out
  ``[head][q, k, v][head_channels]``; with the new order (``QKVAttention``)
  ``[q, k, v][head][head_channels]``. diffusers wants, per projection,
  ``[head][head_channels]``, so the legacy layout is regrouped before the split.
  The attention output is ``[head][head_channels]`` in all three, so
  ``proj_out`` needs no reordering.

Everything is checked before anything is converted: a checkpoint that does not
fit the config raises :class:`ADMCheckpointError` (a ``ValueError``) listing
the unexpected keys, the missing keys and the shape mismatches.

The architecture (:class:`ADMConfig`, presets, :func:`adm_unet_config`) lives
in ``adm_config.py``, the key plan and the checks in ``adm_keys.py``; this
module reads checkpoints and converts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel

from .adm_config import (
    FFHQ_P2,
    IMPROVED_IMAGENET64,
    PRESETS,
    ADMCheckpointError,
    ADMCheckpointNotFoundError,
    ADMConfig,
    adm_scheduler_config,
    adm_unet_config,
)
from .adm_extras import apply_attention_heads, generated_shapes, generated_tensors, mark_fixed_timestep_table
from .adm_keys import SHOWN_KEYS, check_state_dict, convert_tensor, key_plan
from .scheduler_config import attach_scheduler_config
from .unet import build_unet

__all__ = [
    "FFHQ_P2",
    "IMPROVED_IMAGENET64",
    "PRESETS",
    "ADMCheckpointError",
    "ADMCheckpointNotFoundError",
    "ADMConfig",
    "adm_scheduler_config",
    "adm_unet_config",
    "apply_attention_heads",
    "convert_adm_checkpoint",
    "convert_adm_state_dict",
    "load_adm_state_dict",
]

# --------------------------------------------------------------------------- public API


def convert_adm_state_dict(
    state_dict: Mapping[str, torch.Tensor], cfg: ADMConfig = FFHQ_P2
) -> dict[str, torch.Tensor]:
    """A ``UNet2DModel`` state dict (keys of ``adm_unet_config(cfg)``) from a
    guided-diffusion state dict, by the mapping rules in this module's docstring.

    Raises :class:`ADMCheckpointError` (listing the keys) when a checkpoint key
    has no place in ``cfg``'s net, a needed key is absent, or a shape differs.
    Works on meta tensors too (shapes only). Copied tensors are shared with
    ``state_dict``, not cloned.
    """
    plan = key_plan(cfg)
    check_state_dict(state_dict, cfg, plan)
    converted = generated_tensors(cfg)
    for key, rule in plan.items():
        converted.update(zip(rule.targets, convert_tensor(rule, state_dict[key])))
    return converted


def _state_dict_of(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The UNet state dict inside a loaded ``.pt`` object (``source`` names it in errors)."""
    if isinstance(obj, Mapping) and {"state", "param_groups"} <= set(obj):
        raise ADMCheckpointError(f"{source} is an optimizer state (guided-diffusion's opt*.pt); "
                                 "pass the model*.pt or ema_*.pt next to it")
    for wrapper in ("state_dict", "model"):  # a few training scripts wrap the weights
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise ADMCheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict of named tensors")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_adm_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a guided-diffusion ``.pt`` (``torch.load(weights_only=True)`` on the CPU).

    Raises :class:`ADMCheckpointNotFoundError` for a missing file and
    :class:`ADMCheckpointError` for a file that is not a weights checkpoint.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a directory, not a .pt file" if file.is_dir() else "does not exist"
        raise ADMCheckpointNotFoundError(
            f"ADM checkpoint {str(file)!r} {what}. Expected a guided-diffusion UNet checkpoint such as "
            "ffhq_p2.pt, the FFHQ model of the P2-weighting release (jychoi118/P2-weighting on GitHub, "
            "README 'Pre-trained models'), or improved-diffusion's imagenet64_uncond_100M_1500K.pt "
            "(openai/improved-diffusion README, --preset improved_imagenet64); download it and pass its path."
        )
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, pickled code objects, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ADMCheckpointError(
            f"could not read {str(file)!r} as a PyTorch weights checkpoint ({type(exc).__name__}: {first})"
        ) from exc
    return _state_dict_of(obj, repr(str(file)))


def convert_adm_checkpoint(
    path_or_state_dict: str | Path | Mapping[str, torch.Tensor], cfg: ADMConfig = FFHQ_P2
) -> UNet2DModel:
    """A float32 ``UNet2DModel`` (eval mode) holding an ADM checkpoint's weights.

    ``path_or_state_dict`` is a ``.pt`` path (see :func:`load_adm_state_dict`)
    or an already loaded state dict. Every checkpoint key must be consumed and
    every UNet parameter filled, with matching shapes; otherwise
    :class:`ADMCheckpointError` lists the offending keys. Layers whose ADM head
    count diffusers' config cannot say get it (:func:`apply_attention_heads`,
    recorded in the config); a schedule other than DDPM's linear T=1000 is
    attached as ``model.scheduler_config`` (:func:`adm_scheduler_config`), which
    ``save_unet`` writes as ``scheduler_config.json``.
    """
    if isinstance(path_or_state_dict, Mapping):
        state_dict = _state_dict_of(path_or_state_dict, "the state dict")
    else:
        state_dict = load_adm_state_dict(path_or_state_dict)
    converted = convert_adm_state_dict(state_dict, cfg)
    model = build_unet(adm_unet_config(cfg))
    try:
        result = model.load_state_dict(converted, strict=False)
    except RuntimeError as exc:  # cannot happen after check_state_dict; kept readable if it ever does
        raise ADMCheckpointError(f"the converted weights do not fit UNet2DModel: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ADMCheckpointError(
            f"internal error: UNet2DModel parameters not filled {result.missing_keys[:SHOWN_KEYS]}, "
            f"unused converted keys {result.unexpected_keys[:SHOWN_KEYS]}"
        )
    apply_attention_heads(model, cfg.attention_heads())
    if generated_shapes(cfg):  # the rescaled-timestep table: computed by ADM, frozen here
        mark_fixed_timestep_table(model)
    attach_scheduler_config(model, adm_scheduler_config(cfg))
    return model.eval()
