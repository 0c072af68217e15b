"""Convert CompVis latent-diffusion checkpoints (the class-conditional ImageNet
LDM ``cin256-v2`` and its VQ-f4 autoencoder) to diffusers models: a
``UNet2DConditionModel``, a ``VQModel`` and a ``DDIMScheduler``, saved as one
pipeline folder.

A ``LatentDiffusion`` checkpoint (``model.ckpt``, a PyTorch Lightning file)
holds, under ``state_dict``, the UNet (``model.diffusion_model.*``), the first
stage (``first_stage_model.*``), the class embedder
(``cond_stage_model.embedding.weight``) and the schedule buffers. With the
settings of :mod:`.ldm_config` the diffusers models compute the same functions:

* UNet: LDM's ``timestep_embedding`` is ``[cos, sin]`` with frequencies
  ``exp(-ln(10000) i / half)`` (``flip_sin_to_cos=True, freq_shift=0``);
  ``use_scale_shift_norm=False`` (``resnet_time_scale_shift="default"``);
  ``Downsample`` = 3x3 stride-2 conv padded 1, ``Upsample`` = nearest + 3x3
  conv; a ``SpatialTransformer`` (GroupNorm eps 1e-6, 1x1-conv ``proj_in`` /
  ``proj_out``, self-attention, cross-attention, GEGLU feed-forward, all
  LayerNorms before) is diffusers' ``Transformer2DModel`` with
  ``use_linear_projection=False``, down to the parameter names; with
  ``legacy=True`` each transformer has ``num_heads`` heads of ``ch // num_heads``
  (cin256-v2: one head as wide as the level), which diffusers takes as a
  per-level ``attention_head_dim`` (read there as the head count).
* class conditioning: ``ClassEmbedder`` gives the context ``embedding[y]`` of
  shape (B, 1, 512). diffusers' ``encoder_hid_dim_type="text_proj"`` applies a
  Linear(n_classes -> 512) to ``encoder_hidden_states`` before the
  cross-attentions; with weight ``embedding.T`` and bias 0, the one-hot
  ``class_context(y)`` (B, 1, n_classes) gives exactly ``embedding[y]``. So the
  saved UNet is a plain ``UNet2DConditionModel`` called with
  ``encoder_hidden_states=class_context(y, n_classes)``; soft / mixed labels and
  the "no class" row (cin256-v2's index 1000, used for classifier-free guidance)
  work the same way.
* VQ autoencoder: model.py's ``Encoder`` / ``Decoder`` are diffusers'
  ``Encoder`` / ``Decoder`` (GroupNorm eps 1e-6, asymmetric zero pad + stride-2
  conv down, nearest + conv up, one-head attention in the middle blocks);
  ``VQModelInterface.encode`` (pre-quantisation ``quant_conv`` output) is
  ``VQModel.encode(x).latents`` and its ``decode`` (quantise,
  ``post_quant_conv``, decoder) is ``VQModel.decode``; taming's
  ``VectorQuantizer2`` and diffusers' ``VectorQuantizer`` pick the same nearest
  code. ``scaling_factor`` is the LDM's ``scale_factor`` (cin256-v2: 1.0).
* schedule: :func:`.ldm_config.ldm_scheduler_config`.

UNet key mapping (after ``model.diffusion_model.``; every checkpoint key is
used exactly once and every diffusers parameter written exactly once, only
``encoder_hid_proj.bias`` is set to zero):

==========================================  ==============================================
``time_embed.0`` / ``time_embed.2``         ``time_embedding.linear_1`` / ``linear_2``
``input_blocks.0.0``                        ``conv_in``
``input_blocks.k.0`` (ResBlock)             ``down_blocks.L.resnets.j``
``input_blocks.k.1`` (SpatialTransformer)   ``down_blocks.L.attentions.j`` (same names inside)
``input_blocks.k.0.op`` (Downsample)        ``down_blocks.L.downsamplers.0.conv``
``middle_block.0`` / ``.1`` / ``.2``        ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``
``output_blocks.k.0`` / ``.1``              ``up_blocks.U.resnets.j`` / ``attentions.j``
``output_blocks.k.{1|2}.conv`` (Upsample)   ``up_blocks.U.upsamplers.0.conv``
``out.0`` / ``out.2``                       ``conv_norm_out`` / ``conv_out``
``cond_stage_model.embedding.weight``       ``encoder_hid_proj.weight`` (transposed)
==========================================  ==============================================

inside a ResBlock: ``in_layers.0`` -> ``norm1``, ``in_layers.2`` -> ``conv1``,
``emb_layers.1`` -> ``time_emb_proj``, ``out_layers.0`` -> ``norm2``,
``out_layers.3`` -> ``conv2``, ``skip_connection`` -> ``conv_shortcut``.

VQ key mapping (after ``first_stage_model.``): ``encoder.down.i.block.j`` ->
``encoder.down_blocks.i.resnets.j``; ``encoder.down.i.downsample.conv`` ->
``encoder.down_blocks.i.downsamplers.0.conv``; ``decoder.up.i.*`` ->
``decoder.up_blocks.(n-1-i).*`` (``upsample.conv`` -> ``upsamplers.0.conv``);
``{en,de}coder.mid.block_1`` / ``attn_1`` / ``block_2`` -> ``mid_block.resnets.0``
/ ``attentions.0`` / ``resnets.1`` (``norm`` -> ``group_norm``, ``q``/``k``/``v``
-> ``to_q``/``to_k``/``to_v``, ``proj_out`` -> ``to_out.0``, 1x1 conv weights
squeezed to Linear weights); ``nin_shortcut`` -> ``conv_shortcut``;
``norm_out`` -> ``conv_norm_out``; ``quant_conv``, ``quantize.embedding``,
``post_quant_conv``, ``conv_in``, ``conv_out`` keep their names.

The architecture lives in ``ldm_config.py``, the key plans and checks in
``ldm_keys.py``, reading checkpoints in ``ldm_io.py``; this module converts and saves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel, VQModel
from diffusers import __version__ as diffusers_version

from ..io import atomic_write_folder
from .class_labels import CLASS_CONTEXT_KEY
from .ldm_config import (
    CIN256_V2,
    PRESETS,
    VQ_F4,
    LDMCheckpointError,
    LDMCheckpointNotFoundError,
    LDMConfig,
    ldm_scheduler_config,
    ldm_unet_config,
    vq_model_config,
)
from .ldm_io import load_ldm_state_dict, state_dict_of
from .ldm_keys import SHOWN_KEYS, ZERO_FILLED, check_state_dict, convert_tensor, unet_key_plan, vq_key_plan

__all__ = [
    "CIN256_V2",
    "PRESETS",
    "VQ_F4",
    "LDMCheckpointError",
    "LDMCheckpointNotFoundError",
    "LDMComponents",
    "LDMConfig",
    "class_context",
    "convert_ldm_checkpoint",
    "convert_ldm_state_dict",
    "load_ldm_state_dict",
    "save_ldm_pipeline",
]

#: The pipeline class named in ``model_index.json``: diffusers' latent-diffusion
#: pipeline (vqvae + unet + scheduler). Its own ``__call__`` is unconditional;
#: the project drives the components itself.
PIPELINE_CLASS = "LDMPipeline"


@dataclass
class LDMComponents:
    """The converted parts: ``unet`` and ``vqvae`` (float32, eval mode), ``scheduler``,
    and ``n_classes`` (the width of :func:`class_context`)."""

    unet: UNet2DConditionModel
    vqvae: VQModel
    scheduler: DDIMScheduler
    n_classes: int


def class_context(labels: torch.Tensor | list[int], n_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The converted UNet's ``encoder_hidden_states`` for class ``labels``: one-hot,
    shape (B, 1, n_classes). Its ``encoder_hid_proj`` turns it into the class
    embedding LDM's ClassEmbedder gives, (B, 1, context_dim)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D batch of class indices, got shape {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"class labels must be in [0, {n_classes}), got {labels.tolist()}")
    return F.one_hot(labels, n_classes).to(dtype)[:, None, :]


def _schedule_check(state_dict: Mapping[str, torch.Tensor], cfg: LDMConfig, source: str) -> None:
    """The checkpoint's ``betas`` (when stored) must be the config's schedule."""
    betas = state_dict.get("betas")
    if not isinstance(betas, torch.Tensor):
        return
    want = torch.linspace(cfg.linear_start**0.5, cfg.linear_end**0.5, cfg.timesteps, dtype=torch.float64) ** 2
    if betas.shape != want.shape or (betas.double() - want).abs().max() > 1e-6:
        raise LDMCheckpointError(
            f"{source} was trained with another noise schedule: betas {float(betas[0]):.6g} .. "
            f"{float(betas[-1]):.6g} over {betas.numel()} steps, the config has LDM-linear "
            f"{cfg.linear_start} .. {cfg.linear_end} over {cfg.timesteps}; use the preset that matches the checkpoint"
        )


def _scale_factor(state_dict: Mapping[str, torch.Tensor], cfg: LDMConfig) -> float:
    # LatentDiffusion stores scale_factor as a buffer only with scale_by_std; then it is the trained value.
    value = state_dict.get("scale_factor")
    return float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else cfg.scale_factor


def convert_ldm_state_dict(
    state_dict: Mapping[str, torch.Tensor], cfg: LDMConfig = CIN256_V2, source: str = "the checkpoint"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(``UNet2DConditionModel`` state dict, ``VQModel`` state dict) from a
    LatentDiffusion state dict, by the rules in this module's docstring.

    Raises :class:`LDMCheckpointError` (listing the keys) when a key has no place
    in ``cfg``'s models, a needed key is absent, a shape differs or the stored
    schedule is another one. Copied tensors are shared with ``state_dict``."""
    check_state_dict(state_dict, cfg, source)
    _schedule_check(state_dict, cfg, source)
    unet = {rule.target: convert_tensor(rule, state_dict[key]) for key, rule in unet_key_plan(cfg).items()}
    proj = unet["encoder_hid_proj.weight"]
    unet.update({key: torch.zeros(proj.shape[0], dtype=proj.dtype) for key in ZERO_FILLED})
    vq = {rule.target: convert_tensor(rule, state_dict[key]) for key, rule in vq_key_plan(cfg).items()}
    return unet, vq


def _filled(model: torch.nn.Module, weights: dict[str, torch.Tensor], name: str) -> torch.nn.Module:
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # cannot happen after check_state_dict; kept readable if it ever does
        raise LDMCheckpointError(f"the converted weights do not fit {name}: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise LDMCheckpointError(f"internal error: {name} parameters not filled {result.missing_keys[:SHOWN_KEYS]}, "
                                 f"unused converted keys {result.unexpected_keys[:SHOWN_KEYS]}")
    return model.float().eval()


def convert_ldm_checkpoint(
    path_or_state_dict: str | Path | Mapping[str, torch.Tensor], cfg: LDMConfig = CIN256_V2
) -> LDMComponents:
    """The diffusers UNet, VQ autoencoder and scheduler of a LatentDiffusion checkpoint.

    ``path_or_state_dict`` is a ``model.ckpt`` path (see :func:`load_ldm_state_dict`)
    or an already loaded state dict (a Lightning checkpoint dict is unwrapped)."""
    if isinstance(path_or_state_dict, Mapping):
        source = "the state dict"
        state_dict = state_dict_of(path_or_state_dict, source)
    else:
        source = repr(str(Path(path_or_state_dict).expanduser()))
        state_dict = load_ldm_state_dict(path_or_state_dict)
    unet_sd, vq_sd = convert_ldm_state_dict(state_dict, cfg, source)
    unet = _filled(UNet2DConditionModel(**ldm_unet_config(cfg)), unet_sd, "UNet2DConditionModel")
    unet.register_to_config(**{CLASS_CONTEXT_KEY: True})  # its context is a class: this project trains it as such
    vqvae = _filled(VQModel(**vq_model_config(cfg, _scale_factor(state_dict, cfg))), vq_sd, "VQModel")
    scheduler = DDIMScheduler(**ldm_scheduler_config(cfg))
    return LDMComponents(unet=unet, vqvae=vqvae, scheduler=scheduler, n_classes=cfg.n_classes)


def save_ldm_pipeline(parts: LDMComponents, folder: str | Path) -> Path:
    """Write ``unet/``, ``vqvae/`` (safetensors), ``scheduler/`` and
    ``model_index.json`` into ``folder`` atomically (a temporary sibling renamed
    into place); ``diffusers.DiffusionPipeline.from_pretrained(folder)`` loads it."""

    def write(tmp: Path) -> None:
        parts.unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
        parts.vqvae.save_pretrained(str(tmp / "vqvae"), safe_serialization=True)
        parts.scheduler.save_pretrained(str(tmp / "scheduler"))
        index = {
            "_class_name": PIPELINE_CLASS,
            "_diffusers_version": diffusers_version,
            "scheduler": ["diffusers", type(parts.scheduler).__name__],
            "unet": ["diffusers", type(parts.unet).__name__],
            "vqvae": ["diffusers", type(parts.vqvae).__name__],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    return atomic_write_folder(folder, write)
