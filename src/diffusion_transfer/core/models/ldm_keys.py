"""The CompVis LDM -> diffusers key plans (every checkpoint key of the UNet,
the class embedder and the VQ autoencoder, the diffusers key it becomes and
how; the tables are in :mod:`.ldm`'s docstring), the tensor conversion, and
the check that a checkpoint fits a config exactly."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel, VQModel

from .checkpoint_text import SHOWN_KEYS, mismatch_listings, natural_key
from .ldm_config import LDMCheckpointError, LDMConfig, ldm_unet_config, vq_model_config

UNET_PREFIX = "model.diffusion_model."
VQ_PREFIX = "first_stage_model."
CLASS_EMBEDDING = "cond_stage_model.embedding.weight"
#: diffusers parameters with no checkpoint tensor: the class projection has no bias in LDM.
ZERO_FILLED = ("encoder_hid_proj.bias",)

#: LatentDiffusion buffers that are not weights (the schedule, re-derived by the scheduler).
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "lvlb_weights", "logvar",
)

# --------------------------------------------------------------------------- key plans


@dataclass(frozen=True)
class KeyRule:
    """How one checkpoint tensor becomes one diffusers tensor: ``copy`` unchanged,
    ``squeeze`` a 1x1 Conv2d weight to a Linear weight, ``transpose`` the class
    ``Embedding`` (n_classes, d) to the projection's Linear weight (d, n_classes)."""

    kind: str
    target: str


def _layer(src: str, dst: str, kind: str = "copy", params: tuple[str, ...] = ("weight", "bias")) -> dict[str, KeyRule]:
    return {f"{src}.{p}": KeyRule(kind if p == "weight" else "copy", f"{dst}.{p}") for p in params}


def _resblock(src: str, dst: str, ch_in: int, ch_out: int) -> dict[str, KeyRule]:
    """openaimodel.ResBlock -> ResnetBlock2D (the skip conv only when the channels change)."""
    parts = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2"}
    if ch_in != ch_out:
        parts["skip_connection"] = "conv_shortcut"
    return {k: v for a, d in parts.items() for k, v in _layer(f"{src}.{a}", f"{dst}.{d}").items()}


def _transformer(src: str, dst: str, depth: int) -> dict[str, KeyRule]:
    """attention.SpatialTransformer -> Transformer2DModel: the same names inside."""
    with_bias = ["norm", "proj_in", "proj_out"]
    bias_free = []  # CrossAttention's to_q / to_k / to_v
    for d in range(depth):
        block = f"transformer_blocks.{d}"
        with_bias += [f"{block}.{n}" for n in ("attn1.to_out.0", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2",
                                               "norm1", "norm2", "norm3")]
        bias_free += [f"{block}.attn{a}.to_{p}" for a in (1, 2) for p in "qkv"]
    plan = {k: v for n in with_bias for k, v in _layer(f"{src}.{n}", f"{dst}.{n}").items()}
    return plan | {f"{src}.{n}.weight": KeyRule("copy", f"{dst}.{n}.weight") for n in bias_free}


def unet_key_plan(cfg: LDMConfig) -> dict[str, KeyRule]:
    """Every UNet / class-embedder checkpoint key of ``cfg`` and its rule, built by
    walking openaimodel.UNetModel.__init__ in order (tracking channels like it)."""
    u, p = cfg.unet, UNET_PREFIX
    chans, attn, last = u.block_channels, u.attention_levels, len(u.block_channels) - 1
    plan = _layer(f"{p}time_embed.0", "time_embedding.linear_1") | _layer(f"{p}time_embed.2", "time_embedding.linear_2")
    plan |= _layer(f"{p}input_blocks.0.0", "conv_in")
    ch, k, skips = chans[0], 1, [chans[0]]
    for level, out in enumerate(chans):
        for j in range(u.num_res_blocks):
            plan |= _resblock(f"{p}input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", ch, out)
            ch = out
            if level in attn:
                plan |= _transformer(f"{p}input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", u.transformer_depth)
            skips.append(ch)
            k += 1
        if level != last:
            plan |= _layer(f"{p}input_blocks.{k}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            skips.append(ch)
            k += 1
    plan |= _resblock(f"{p}middle_block.0", "mid_block.resnets.0", ch, ch)
    plan |= _transformer(f"{p}middle_block.1", "mid_block.attentions.0", u.transformer_depth)
    plan |= _resblock(f"{p}middle_block.2", "mid_block.resnets.1", ch, ch)
    k = 0
    for up, level in enumerate(reversed(range(len(chans)))):
        for j in range(u.num_res_blocks + 1):
            out = chans[level]
            plan |= _resblock(f"{p}output_blocks.{k}.0", f"up_blocks.{up}.resnets.{j}", ch + skips.pop(), out)
            ch, n = out, 1
            if level in attn:
                plan |= _transformer(f"{p}output_blocks.{k}.1", f"up_blocks.{up}.attentions.{j}", u.transformer_depth)
                n = 2
            if level and j == u.num_res_blocks:  # the level's last block also upsamples
                plan |= _layer(f"{p}output_blocks.{k}.{n}.conv", f"up_blocks.{up}.upsamplers.0.conv")
            k += 1
    plan |= _layer(f"{p}out.0", "conv_norm_out") | _layer(f"{p}out.2", "conv_out")
    plan[CLASS_EMBEDDING] = KeyRule("transpose", "encoder_hid_proj.weight")
    return plan


def _vq_resnet(src: str, dst: str, ch_in: int, ch_out: int) -> dict[str, KeyRule]:
    parts = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2"}
    if ch_in != ch_out:
        parts["nin_shortcut"] = "conv_shortcut"
    return {k: v for a, d in parts.items() for k, v in _layer(f"{src}.{a}", f"{dst}.{d}").items()}


def _vq_mid(src: str, dst: str, ch: int) -> dict[str, KeyRule]:
    plan = _vq_resnet(f"{src}.block_1", f"{dst}.resnets.0", ch, ch) | _vq_resnet(f"{src}.block_2", f"{dst}.resnets.1", ch, ch)
    plan |= _layer(f"{src}.attn_1.norm", f"{dst}.attentions.0.group_norm")
    for a, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):  # 1x1 convs -> Linears
        plan |= _layer(f"{src}.attn_1.{a}", f"{dst}.attentions.0.{d}", kind="squeeze")
    return plan


def vq_key_plan(cfg: LDMConfig) -> dict[str, KeyRule]:
    """Every first-stage checkpoint key of ``cfg`` and its rule (model.py's
    Encoder / Decoder, ``quant_conv``, ``quantize``, ``post_quant_conv``)."""
    vq, p = cfg.first_stage, VQ_PREFIX
    chans, n = vq.block_channels, len(vq.block_channels)
    plan = _layer(f"{p}encoder.conv_in", "encoder.conv_in")
    ch = chans[0]
    for i, out in enumerate(chans):
        for j in range(vq.num_res_blocks):
            plan |= _vq_resnet(f"{p}encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", ch, out)
            ch = out
        if i != n - 1:
            plan |= _layer(f"{p}encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
    plan |= _vq_mid(f"{p}encoder.mid", "encoder.mid_block", ch)
    plan |= _layer(f"{p}encoder.norm_out", "encoder.conv_norm_out") | _layer(f"{p}encoder.conv_out", "encoder.conv_out")
    plan |= _layer(f"{p}quant_conv", "quant_conv")
    plan[f"{p}quantize.embedding.weight"] = KeyRule("copy", "quantize.embedding.weight")
    plan |= _layer(f"{p}post_quant_conv", "post_quant_conv")
    plan |= _layer(f"{p}decoder.conv_in", "decoder.conv_in")
    plan |= _vq_mid(f"{p}decoder.mid", "decoder.mid_block", ch)
    for i in reversed(range(n)):  # the decoder's up.{i} is level i; diffusers counts from the bottom
        dst = f"decoder.up_blocks.{n - 1 - i}"
        for j in range(vq.num_res_blocks + 1):
            plan |= _vq_resnet(f"{p}decoder.up.{i}.block.{j}", f"{dst}.resnets.{j}", ch, chans[i])
            ch = chans[i]
        if i != 0:
            plan |= _layer(f"{p}decoder.up.{i}.upsample.conv", f"{dst}.upsamplers.0.conv")
    plan |= _layer(f"{p}decoder.norm_out", "decoder.conv_norm_out") | _layer(f"{p}decoder.conv_out", "decoder.conv_out")
    return plan


# --------------------------------------------------------------------------- shapes and tensors


@functools.lru_cache(maxsize=8)
def target_shapes(cfg: LDMConfig) -> tuple[dict[str, torch.Size], dict[str, torch.Size]]:
    """(UNet, VQModel) parameter shapes, from models built on the meta device (no memory)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**ldm_unet_config(cfg))
        vq = VQModel(**vq_model_config(cfg))
    return ({k: v.shape for k, v in unet.state_dict().items()}, {k: v.shape for k, v in vq.state_dict().items()})


def source_shape(rule: KeyRule, target: torch.Size) -> tuple[int, ...]:
    """The shape the checkpoint tensor must have, given its diffusers target's shape."""
    if rule.kind == "squeeze":
        return (*target, 1, 1)
    if rule.kind == "transpose":
        return tuple(reversed(target))
    return tuple(target)


def convert_tensor(rule: KeyRule, tensor: torch.Tensor) -> torch.Tensor:
    if rule.kind == "squeeze":
        return tensor[:, :, 0, 0]
    if rule.kind == "transpose":
        return tensor.t().contiguous()
    return tensor


# --------------------------------------------------------------------------- checks / messages



def _describe(state_dict: Mapping[str, Any]) -> str:
    """What the checkpoint itself says about its architecture (for the hint)."""
    facts = []
    for key, what in ((f"{UNET_PREFIX}input_blocks.0.0.weight", "UNet model_channels={0}, in_channels={1}"),
                      (CLASS_EMBEDDING, "ClassEmbedder n_classes={0}, embed_dim={1}"),
                      (f"{VQ_PREFIX}quantize.embedding.weight", "VQ n_embed={0}, embed_dim={1}")):
        value = state_dict.get(key)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            facts.append(what.format(*value.shape[:2]))
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(rf"{re.escape(UNET_PREFIX)}input_blocks\.(\d+)\.", k))}
    if blocks:
        facts.append(f"{max(blocks) + 1} UNet input_blocks")
    if not any(k.startswith((UNET_PREFIX, VQ_PREFIX)) for k in state_dict):
        facts.append("no model.diffusion_model.* / first_stage_model.* keys (not a LatentDiffusion checkpoint?)")
    return ", ".join(facts) or "none of the expected keys"


def _wrong_shapes(state_dict: Mapping[str, Any], plan: Mapping[str, KeyRule], shapes: Mapping[str, torch.Size]) -> list[str]:
    wrong = []
    for key, rule in plan.items():
        value = state_dict.get(key)
        if value is None:
            continue
        want = source_shape(rule, shapes[rule.target])
        if not isinstance(value, torch.Tensor):
            wrong.append(f"{key}: a {type(value).__name__}, expected a tensor of shape {want}")
        elif tuple(value.shape) != want:
            wrong.append(f"{key}: shape {tuple(value.shape)}, expected {want}")
    return sorted(wrong, key=natural_key)


def check_plan_covers(plan: Mapping[str, KeyRule], shapes: Mapping[str, torch.Size], zero: tuple[str, ...], what: str):
    """The plan must write every diffusers parameter exactly once (a converter bug otherwise)."""
    written = [rule.target for rule in plan.values()] + list(zero)
    if sorted(written) != sorted(shapes):
        raise LDMCheckpointError(
            f"internal error: the LDM key plan does not cover {what} exactly "
            f"(unwritten: {sorted(set(shapes) - set(written))[:SHOWN_KEYS]}, "
            f"unknown or twice: {sorted(k for k in set(written) if written.count(k) != 1 or k not in shapes)[:SHOWN_KEYS]})"
        )


def check_state_dict(state_dict: Mapping[str, Any], cfg: LDMConfig, source: str = "the checkpoint") -> None:
    """Raise :class:`LDMCheckpointError` unless the weights are exactly ``cfg``'s
    (schedule buffers and ``scale_factor`` are allowed and not weights)."""
    unet_shapes, vq_shapes = target_shapes(cfg)
    unet_plan, vq_plan = unet_key_plan(cfg), vq_key_plan(cfg)
    check_plan_covers(unet_plan, unet_shapes, ZERO_FILLED, "UNet2DConditionModel")
    check_plan_covers(vq_plan, vq_shapes, (), "VQModel")
    plan = unet_plan | vq_plan
    allowed = set(SCHEDULE_BUFFERS) | {"scale_factor"}
    unexpected = sorted((k for k in state_dict if k not in plan and k not in allowed), key=natural_key)
    missing = sorted((k for k in plan if k not in state_dict), key=natural_key)
    wrong = _wrong_shapes(state_dict, unet_plan, unet_shapes) + _wrong_shapes(state_dict, vq_plan, vq_shapes)
    if not (unexpected or missing or wrong):
        return
    parts = [f"{source} does not match the LDM architecture {cfg!r}:", *mismatch_listings(unexpected, missing, wrong)]
    parts.append(f"The checkpoint has {len(state_dict)} keys: {_describe(state_dict)}. Pass the LatentDiffusion "
                 "checkpoint the preset describes (cin256_v2: CompVis's cin256-v2 model.ckpt, with its VQ-f4 "
                 "first stage and ClassEmbedder inside), or the preset that built it.")
    raise LDMCheckpointError("\n".join(parts))
