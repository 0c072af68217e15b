"""Convert guided-diffusion (ADM) UNet checkpoints to a diffusers ``UNet2DModel``.

Guided-diffusion's ``UNetModel`` (openai/guided-diffusion ``unet.py``; the
P2-weighting release, jychoi118/P2-weighting, ships its FFHQ model
``ffhq_p2.pt`` in that format) and diffusers' ``UNet2DModel`` compute the same
function once the diffusers model is configured by :func:`adm_unet_config`:

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
* GroupNorm32: 32 groups, eps 1e-5 everywhere (``norm_eps=1e-5``).

Key mapping (ADM key -> diffusers key; every ADM key is used exactly once
and every diffusers parameter is written exactly once):

==========================================  =========================================
``time_embed.0`` / ``time_embed.2``         ``time_embedding.linear_1`` / ``linear_2``
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
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "FFHQ_P2",
    "PRESETS",
    "ADMCheckpointError",
    "ADMCheckpointNotFoundError",
    "ADMConfig",
    "adm_unet_config",
    "convert_adm_checkpoint",
    "convert_adm_state_dict",
    "load_adm_state_dict",
]

GROUPS = 32  # GroupNorm32 in guided-diffusion's nn.normalization
NORM_EPS = 1e-5  # nn.GroupNorm's default, which GroupNorm32 keeps
_SHOW = 8  # keys listed per category in an error message


class ADMCheckpointError(ValueError):
    """The checkpoint cannot be converted; the message says which keys / why."""


class ADMCheckpointNotFoundError(ADMCheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a ``FileNotFoundError``)."""


# --------------------------------------------------------------------------- config


def _comma_tuple(value: Any) -> Any:
    # guided-diffusion's scripts take "1,1,2,2,4,4" / "32,16,8" strings; so do the CLI and JSON.
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, int):
        return (value,)
    return value


class ADMConfig(BaseModel):
    """The guided-diffusion ``create_model`` arguments that shape the UNet.

    The defaults are the P2-weighting FFHQ model (:data:`FFHQ_P2`). Unknown keys
    are rejected (naming the key), so a misspelt field never passes silently.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(256, ge=1, description="image resolution (pixels)")
    num_channels: int = Field(128, ge=1, description="base channel count (model_channels)")
    num_res_blocks: int = Field(1, ge=1, description="ResBlocks per level on the way down")
    channel_mult: tuple[int | float, ...] = Field(
        (1, 1, 2, 2, 4, 4), min_length=1, description="channel multiplier per level, e.g. 1,1,2,2,4,4"
    )
    attention_resolutions: tuple[int, ...] = Field(
        (16,), description="feature-map resolutions with attention, e.g. 32,16,8 (ADM: image_size // ds)"
    )
    num_heads: int = Field(1, ge=1, description="attention heads when num_head_channels is -1")
    num_head_channels: int = Field(64, description="channels per attention head; -1 uses num_heads")
    num_heads_upsample: int = Field(-1, description="heads on the way up when num_head_channels is -1; -1 = num_heads")
    use_scale_shift_norm: bool = Field(True, description="FiLM-like scale/shift time conditioning")
    resblock_updown: bool = Field(True, description="down/upsample with ResBlocks instead of (conv) resamplers")
    learn_sigma: bool = Field(True, description="6 output channels (eps + variance interpolation)")
    use_new_attention_order: bool = Field(False, description="QKVAttention (True) or QKVAttentionLegacy (False)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="ResBlock dropout (training only)")
    class_cond: bool = Field(False, description="class-conditional model (not supported)")

    @field_validator("channel_mult", "attention_resolutions", mode="before")
    @classmethod
    def _split_strings(cls, value: Any) -> Any:
        return _comma_tuple(value)

    @field_validator("channel_mult", "attention_resolutions")
    @classmethod
    def _positive_entries(cls, value: tuple[int | float, ...]) -> tuple[int | float, ...]:
        if any(v <= 0 for v in value):
            raise ValueError(f"entries must be positive, got {value}")
        return value

    @model_validator(mode="after")
    def _convertible(self) -> ADMConfig:
        # These are the cases where diffusers' UNet2DModel cannot express the ADM net.
        if self.class_cond:
            raise ValueError("class-conditional ADM models (class_cond=True) are not supported")
        chans = self.block_channels
        if chans[0] != self.num_channels:
            # ADM sizes the time embedding by num_channels, diffusers by block_out_channels[0].
            raise ValueError(f"channel_mult[0] must be 1 (got {self.channel_mult[0]}): diffusers sizes "
                             "the time embedding by the first level's channels")
        if any(c % GROUPS for c in chans):
            raise ValueError(f"every level's channel count must be a multiple of {GROUPS} (GroupNorm32), got {chans}")
        factor = 2 ** (len(chans) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**(levels-1) = {factor}")
        for name in ("num_head_channels", "num_heads_upsample"):
            if getattr(self, name) == 0 or getattr(self, name) < -1:
                raise ValueError(f"{name} must be positive or -1, got {getattr(self, name)}")
        _ = self.head_dim  # raises ValueError when diffusers cannot express ADM's heads
        return self

    @property
    def block_channels(self) -> tuple[int, ...]:
        """Channels of each level, ``int(mult * num_channels)`` as in ADM."""
        return tuple(int(m * self.num_channels) for m in self.channel_mult)

    @property
    def attention_levels(self) -> frozenset[int]:
        """Levels with attention: level L has downsampling rate ``ds = 2**L``,
        and ADM attends where ``ds`` is one of ``image_size // res``."""
        rates = {self.image_size // res for res in self.attention_resolutions}
        return frozenset(level for level in range(len(self.channel_mult)) if 2**level in rates)

    def heads(self, channels: int, upsample: bool = False) -> int:
        """Attention heads ADM uses for a block of ``channels`` channels."""
        if self.num_head_channels > 0:
            return channels // self.num_head_channels
        if upsample and self.num_heads_upsample != -1:
            return self.num_heads_upsample
        return self.num_heads

    @property
    def head_dim(self) -> int:
        """The one attention head width diffusers allows (``attention_head_dim``)."""
        chans = self.block_channels
        attended = {chans[-1]} | {chans[level] for level in self.attention_levels}  # the mid block always attends
        if self.num_head_channels > 0:
            bad = sorted(c for c in attended if c % self.num_head_channels)
            if bad:
                raise ValueError(
                    f"num_head_channels {self.num_head_channels} does not divide the attention channels {bad}"
                )
            return self.num_head_channels
        # A fixed head count: the width per head varies with the channels; diffusers needs one width.
        level_chans = [chans[level] for level in self.attention_levels]
        widths = {chans[-1] / self.heads(chans[-1])}  # the mid block uses num_heads
        widths |= {c / self.heads(c, upsample=up) for c in level_chans for up in (False, True)}
        if len(widths) != 1 or not float(next(iter(widths))).is_integer():
            raise ValueError(f"with num_head_channels=-1 every attention layer must have the same head width "
                             f"for diffusers; these heads give widths {sorted(widths)}")
        return int(next(iter(widths)))


#: The P2-weighting FFHQ 256x256 model (``ffhq_p2.pt``, jychoi118/P2-weighting README flags).
FFHQ_P2 = ADMConfig(
    image_size=256,
    num_channels=128,
    num_res_blocks=1,
    channel_mult=(1, 1, 2, 2, 4, 4),
    attention_resolutions=(16,),
    num_head_channels=64,
    use_scale_shift_norm=True,
    resblock_updown=True,
    learn_sigma=True,
    use_new_attention_order=False,
    dropout=0.0,
)

PRESETS: dict[str, ADMConfig] = {"ffhq_p2": FFHQ_P2}


def adm_unet_config(cfg: ADMConfig) -> dict[str, Any]:
    """``UNet2DModel`` keyword arguments that reproduce the ADM net of ``cfg``."""
    levels = range(len(cfg.channel_mult))
    attn = cfg.attention_levels
    if cfg.resblock_updown:  # levels without attention: blocks whose resampler is a ResnetBlock2D
        plain_down, plain_up, resample = "ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D", "resnet"
    else:  # ... or a strided conv / nearest + conv, like ADM's Downsample / Upsample(use_conv=True)
        plain_down, plain_up, resample = "DownBlock2D", "UpBlock2D", "conv"
    return {
        "sample_size": cfg.image_size,
        "in_channels": 3,
        "out_channels": 6 if cfg.learn_sigma else 3,
        "block_out_channels": cfg.block_channels,
        "layers_per_block": cfg.num_res_blocks,
        "down_block_types": tuple("AttnDownBlock2D" if lv in attn else plain_down for lv in levels),
        "up_block_types": tuple("AttnUpBlock2D" if lv in attn else plain_up for lv in reversed(levels)),
        "mid_block_type": "UNetMidBlock2D",
        "add_attention": True,  # ADM's middle block always attends
        "attention_head_dim": cfg.head_dim,
        "norm_num_groups": GROUPS,
        "attn_norm_num_groups": GROUPS,  # else no GroupNorm in the mid attention under scale_shift
        "norm_eps": NORM_EPS,
        "resnet_time_scale_shift": "scale_shift" if cfg.use_scale_shift_norm else "default",
        "downsample_type": resample,  # only read by the Attn* blocks; the others are chosen above
        "upsample_type": resample,
        "downsample_padding": 1,  # ADM's strided 3x3 conv pads 1
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,  # ADM: cat([cos, sin])
        "freq_shift": 0,  # ADM divides the exponent by half, not half - shift
        "act_fn": "silu",
        "dropout": cfg.dropout,
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
    }


# --------------------------------------------------------------------------- key plan

_RESBLOCK = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
}


@dataclass(frozen=True)
class _Rule:
    """How one ADM tensor becomes diffusers tensors.

    ``copy``: unchanged; ``squeeze``: 1x1 Conv1d weight -> Linear weight;
    ``qkv``: split (and, for the legacy order, regroup) into to_q/to_k/to_v.
    """

    kind: str
    targets: tuple[str, ...]
    heads: int = 0
    legacy: bool = False


def _resblock(adm: str, dif: str, ch_in: int, ch_out: int) -> dict[str, _Rule]:
    parts = dict(_RESBLOCK)
    if ch_in != ch_out:  # ADM has an Identity skip otherwise (no parameters)
        parts["skip_connection"] = "conv_shortcut"
    return {f"{adm}.{a}.{p}": _Rule("copy", (f"{dif}.{d}.{p}",)) for a, d in parts.items() for p in ("weight", "bias")}


def _attention(adm: str, dif: str, heads: int, legacy: bool) -> dict[str, _Rule]:
    rules = {f"{adm}.norm.{p}": _Rule("copy", (f"{dif}.group_norm.{p}",)) for p in ("weight", "bias")}
    for p in ("weight", "bias"):
        rules[f"{adm}.qkv.{p}"] = _Rule("qkv", tuple(f"{dif}.to_{n}.{p}" for n in "qkv"), heads, legacy)
    rules[f"{adm}.proj_out.weight"] = _Rule("squeeze", (f"{dif}.to_out.0.weight",))
    rules[f"{adm}.proj_out.bias"] = _Rule("copy", (f"{dif}.to_out.0.bias",))
    return rules


def _layer(adm: str, dif: str, kind: str = "copy") -> dict[str, _Rule]:
    return {f"{adm}.{p}": _Rule(kind, (f"{dif}.{p}",)) for p in ("weight", "bias")}


def _key_plan(cfg: ADMConfig) -> dict[str, _Rule]:
    """Every ADM key of ``cfg``'s net and its rule, built by walking the net in
    ``UNetModel.__init__``'s order (tracking channels like it does)."""
    chans, attn, legacy = cfg.block_channels, cfg.attention_levels, not cfg.use_new_attention_order
    last = len(chans) - 1
    plan = _layer("time_embed.0", "time_embedding.linear_1") | _layer("time_embed.2", "time_embedding.linear_2")
    plan |= _layer("input_blocks.0.0", "conv_in")

    ch, k, skips = chans[0], 1, [chans[0]]
    for level, out in enumerate(chans):
        for j in range(cfg.num_res_blocks):
            plan |= _resblock(f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", ch, out)
            ch = out
            if level in attn:
                plan |= _attention(f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", cfg.heads(ch), legacy)
            skips.append(ch)
            k += 1
        if level != last:
            dif = f"down_blocks.{level}.downsamplers.0"
            if cfg.resblock_updown:
                plan |= _resblock(f"input_blocks.{k}.0", dif, ch, ch)
            else:
                plan |= _layer(f"input_blocks.{k}.0.op", f"{dif}.conv")
            skips.append(ch)
            k += 1

    plan |= _resblock("middle_block.0", "mid_block.resnets.0", ch, ch)
    plan |= _attention("middle_block.1", "mid_block.attentions.0", cfg.heads(ch), legacy)
    plan |= _resblock("middle_block.2", "mid_block.resnets.1", ch, ch)

    k = 0
    for up, level in enumerate(reversed(range(len(chans)))):
        for j in range(cfg.num_res_blocks + 1):
            out = chans[level]
            plan |= _resblock(f"output_blocks.{k}.0", f"up_blocks.{up}.resnets.{j}", ch + skips.pop(), out)
            ch, n = out, 1
            if level in attn:
                heads = cfg.heads(ch, upsample=True)
                plan |= _attention(f"output_blocks.{k}.1", f"up_blocks.{up}.attentions.{j}", heads, legacy)
                n = 2
            if level and j == cfg.num_res_blocks:  # the level's last block also upsamples
                dif = f"up_blocks.{up}.upsamplers.0"
                if cfg.resblock_updown:
                    plan |= _resblock(f"output_blocks.{k}.{n}", dif, ch, ch)
                else:
                    plan |= _layer(f"output_blocks.{k}.{n}.conv", f"{dif}.conv")
            k += 1

    plan |= _layer("out.0", "conv_norm_out") | _layer("out.2", "conv_out")
    return plan


@functools.lru_cache(maxsize=8)
def _target_shapes(cfg: ADMConfig) -> dict[str, torch.Size]:
    # On the meta device: the shapes of the full-size model without allocating it.
    with torch.device("meta"):
        model = UNet2DModel(**adm_unet_config(cfg))
    return {key: value.shape for key, value in model.state_dict().items()}


def _adm_shape(rule: _Rule, shapes: Mapping[str, torch.Size]) -> tuple[int, ...]:
    """The shape the ADM tensor must have, given its diffusers targets' shapes."""
    first = tuple(shapes[rule.targets[0]])
    if rule.kind == "squeeze":
        return (*first, 1)
    if rule.kind == "qkv":  # weight (3C, C, 1) from to_q (C, C); bias (3C,) from (C,)
        return (3 * first[0], *first[1:], 1) if len(first) == 2 else (3 * first[0],)
    return first


def _convert(rule: _Rule, tensor: torch.Tensor) -> list[torch.Tensor]:
    if rule.kind == "copy":
        return [tensor]
    if rule.kind == "squeeze":
        return [tensor[..., 0]]
    # qkv: rows are output channels; weight (3C, C, 1) -> (3C, C), bias (3C,) -> (3C, 1).
    rows = tensor.reshape(tensor.shape[0], -1)
    c = rows.shape[0] // 3
    if rule.legacy:  # [head][q,k,v][ch] -> [q,k,v][head][ch]
        rows = rows.reshape(rule.heads, 3, c // rule.heads, -1).transpose(0, 1)
    parts = rows.reshape(3, c, -1)
    out_shape = (c, *tensor.shape[1:-1]) if tensor.dim() == 3 else (c,)
    return [parts[i].reshape(out_shape).contiguous() for i in range(3)]


# --------------------------------------------------------------------------- checks / messages


def _natural(key: str) -> list[Any]:
    # input_blocks.2 before input_blocks.10
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_SHOW]
    more = f"\n    ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"  {len(items)} {title}:\n" + "\n".join(f"    {item}" for item in shown) + more


def _describe(state_dict: Mapping[str, Any]) -> str:
    """What the checkpoint itself says about its architecture (for the hint)."""
    facts = []
    conv_in, conv_out = state_dict.get("input_blocks.0.0.weight"), state_dict.get("out.2.weight")
    if isinstance(conv_in, torch.Tensor) and conv_in.dim() == 4:
        facts.append(f"num_channels={conv_in.shape[0]}")
    if isinstance(conv_out, torch.Tensor) and conv_out.dim() == 4:
        facts.append(f"{conv_out.shape[0]} output channels (learn_sigma={conv_out.shape[0] == 6})")
    for name in ("input_blocks", "output_blocks"):
        blocks = {int(m.group(1)) for key in state_dict if (m := re.match(rf"{name}\.(\d+)\.", key))}
        if blocks:
            qkv = re.compile(rf"{name}\.(\d+)\.\d+\.qkv\.")
            attn = sorted({int(m.group(1)) for key in state_dict if (m := qkv.match(key))})
            facts.append(f"{max(blocks) + 1} {name} (attention in {attn or 'none'})")
    if any(key.startswith("label_emb.") for key in state_dict):
        facts.append("a label_emb (class-conditional; not supported)")
    return ", ".join(facts) if facts else "no guided-diffusion UNet keys"


def _check(state_dict: Mapping[str, Any], cfg: ADMConfig, plan: Mapping[str, _Rule]) -> None:
    """Raise :class:`ADMCheckpointError` unless the keys and shapes are exactly ``cfg``'s."""
    shapes = _target_shapes(cfg)
    # The plan must write every diffusers parameter exactly once (a converter bug otherwise).
    written = [t for rule in plan.values() for t in rule.targets]
    if sorted(written) != sorted(shapes):
        raise ADMCheckpointError(
            f"internal error: the ADM key plan does not cover UNet2DModel exactly for {cfg!r} "
            f"(unwritten: {sorted(set(shapes) - set(written))[:_SHOW]}, "
            f"unknown: {sorted(set(written) - set(shapes))[:_SHOW]})"
        )
    unexpected = sorted((k for k in state_dict if k not in plan), key=_natural)
    missing = sorted((k for k in plan if k not in state_dict), key=_natural)
    wrong = []
    for key, rule in plan.items():
        value = state_dict.get(key)
        if value is None:
            continue
        want = _adm_shape(rule, shapes)
        if not isinstance(value, torch.Tensor):
            wrong.append(f"{key}: a {type(value).__name__}, expected a tensor of shape {want}")
        elif tuple(value.shape) != want:
            wrong.append(f"{key}: shape {tuple(value.shape)}, expected {want}")
    if not (unexpected or missing or wrong):
        return
    wrong.sort(key=_natural)
    parts = [f"the checkpoint does not match the ADM architecture {cfg!r}:"]
    if unexpected:
        parts.append(_listing("unexpected key(s) (in the checkpoint, not in this architecture)", unexpected))
    if missing:
        parts.append(_listing("missing key(s) (needed by this architecture, absent from the checkpoint)", missing))
    if wrong:
        parts.append(_listing("shape mismatch(es)", wrong))
    parts.append(f"The checkpoint has {len(state_dict)} keys: {_describe(state_dict)}. "
                 "Pick the preset / flags that built it (channel_mult, num_res_blocks, attention_resolutions, ...).")
    raise ADMCheckpointError("\n".join(parts))


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
    plan = _key_plan(cfg)
    _check(state_dict, cfg, plan)
    converted: dict[str, torch.Tensor] = {}
    for key, rule in plan.items():
        converted.update(zip(rule.targets, _convert(rule, state_dict[key])))
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
            "README 'Pre-trained models'); download it and pass its path."
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
    :class:`ADMCheckpointError` lists the offending keys.
    """
    from .unet import build_unet  # its validation; a local import keeps this module light for the CLI

    if isinstance(path_or_state_dict, Mapping):
        state_dict = _state_dict_of(path_or_state_dict, "the state dict")
    else:
        state_dict = load_adm_state_dict(path_or_state_dict)
    converted = convert_adm_state_dict(state_dict, cfg)
    model = build_unet(adm_unet_config(cfg))
    try:
        result = model.load_state_dict(converted, strict=False)
    except RuntimeError as exc:  # cannot happen after _check; kept readable if it ever does
        raise ADMCheckpointError(f"the converted weights do not fit UNet2DModel: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ADMCheckpointError(
            f"internal error: UNet2DModel parameters not filled {result.missing_keys[:_SHOW]}, "
            f"unused converted keys {result.unexpected_keys[:_SHOW]}"
        )
    return model.eval()
