"""The ADM -> diffusers key plan (every ADM key, the diffusers key(s) it
becomes and how; the table is in :mod:`.adm`'s docstring), the tensor
conversion, and the check that a state dict fits a config exactly."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DModel

from .adm_config import ADMCheckpointError, ADMConfig, adm_unet_config
from .adm_extras import generated_shapes
from .checkpoint_text import SHOWN_KEYS, mismatch_listings, natural_key

# --------------------------------------------------------------------------- key plan

_RESBLOCK = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
}


@dataclass(frozen=True)
class KeyRule:
    """How one ADM tensor becomes diffusers tensors.

    ``copy``: unchanged; ``squeeze``: 1x1 Conv1d weight -> Linear weight;
    ``qkv``: split (and, for the legacy order, regroup) into to_q/to_k/to_v.
    """

    kind: str
    targets: tuple[str, ...]
    heads: int = 0
    legacy: bool = False


def _resblock(adm: str, dif: str, ch_in: int, ch_out: int) -> dict[str, KeyRule]:
    parts = dict(_RESBLOCK)
    if ch_in != ch_out:  # ADM has an Identity skip otherwise (no parameters)
        parts["skip_connection"] = "conv_shortcut"
    return {f"{adm}.{a}.{p}": KeyRule("copy", (f"{dif}.{d}.{p}",)) for a, d in parts.items() for p in ("weight", "bias")}


def _attention(adm: str, dif: str, heads: int, legacy: bool) -> dict[str, KeyRule]:
    rules = {f"{adm}.norm.{p}": KeyRule("copy", (f"{dif}.group_norm.{p}",)) for p in ("weight", "bias")}
    for p in ("weight", "bias"):
        rules[f"{adm}.qkv.{p}"] = KeyRule("qkv", tuple(f"{dif}.to_{n}.{p}" for n in "qkv"), heads, legacy)
    rules[f"{adm}.proj_out.weight"] = KeyRule("squeeze", (f"{dif}.to_out.0.weight",))
    rules[f"{adm}.proj_out.bias"] = KeyRule("copy", (f"{dif}.to_out.0.bias",))
    return rules


def _layer(adm: str, dif: str, kind: str = "copy") -> dict[str, KeyRule]:
    return {f"{adm}.{p}": KeyRule(kind, (f"{dif}.{p}",)) for p in ("weight", "bias")}


def key_plan(cfg: ADMConfig) -> dict[str, KeyRule]:
    """Every ADM key of ``cfg``'s net and its rule, built by walking the net in
    ``UNetModel.__init__``'s order (tracking channels like it does)."""
    chans, attn, legacy = cfg.block_channels, cfg.attention_levels, not cfg.use_new_attention_order
    last = len(chans) - 1
    plan = _layer("time_embed.0", "time_embedding.linear_1") | _layer("time_embed.2", "time_embedding.linear_2")
    if cfg.class_cond:  # nn.Embedding(num_classes, 4 * num_channels), added to the time embedding
        plan["label_emb.weight"] = KeyRule("copy", ("class_embedding.weight",))
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
def target_shapes(cfg: ADMConfig) -> dict[str, torch.Size]:
    # On the meta device: the shapes of the full-size model without allocating it.
    with torch.device("meta"):
        model = UNet2DModel(**adm_unet_config(cfg))
    return {key: value.shape for key, value in model.state_dict().items()}


def _adm_shape(rule: KeyRule, shapes: Mapping[str, torch.Size]) -> tuple[int, ...]:
    """The shape the ADM tensor must have, given its diffusers targets' shapes."""
    first = tuple(shapes[rule.targets[0]])
    if rule.kind == "squeeze":
        return (*first, 1)
    if rule.kind == "qkv":  # weight (3C, C, 1) from to_q (C, C); bias (3C,) from (C,)
        return (3 * first[0], *first[1:], 1) if len(first) == 2 else (3 * first[0],)
    return first


def convert_tensor(rule: KeyRule, tensor: torch.Tensor) -> list[torch.Tensor]:
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
    label_emb = state_dict.get("label_emb.weight")
    if isinstance(label_emb, torch.Tensor) and label_emb.dim() == 2:
        facts.append(f"a label_emb of {label_emb.shape[0]} classes (class-conditional: "
                      f"--class-cond true --num-classes {label_emb.shape[0]})")
    elif any(key.startswith("label_emb.") for key in state_dict):
        facts.append("a label_emb (class-conditional: --class-cond true)")
    return ", ".join(facts) if facts else "no guided-diffusion UNet keys"


def check_state_dict(state_dict: Mapping[str, Any], cfg: ADMConfig, plan: Mapping[str, KeyRule]) -> None:
    """Raise :class:`ADMCheckpointError` unless the keys and shapes are exactly ``cfg``'s."""
    shapes = target_shapes(cfg)
    # The plan (and the tensors made from cfg) must write every diffusers parameter exactly once.
    written = [t for rule in plan.values() for t in rule.targets] + list(generated_shapes(cfg))
    if sorted(written) != sorted(shapes):
        raise ADMCheckpointError(
            f"internal error: the ADM key plan does not cover UNet2DModel exactly for {cfg!r} "
            f"(unwritten: {sorted(set(shapes) - set(written))[:SHOWN_KEYS]}, "
            f"unknown: {sorted(set(written) - set(shapes))[:SHOWN_KEYS]})"
        )
    unexpected = sorted((k for k in state_dict if k not in plan), key=natural_key)
    missing = sorted((k for k in plan if k not in state_dict), key=natural_key)
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
    wrong.sort(key=natural_key)
    parts = [f"the checkpoint does not match the ADM architecture {cfg!r}:",
             *mismatch_listings(unexpected, missing, wrong)]
    parts.append(f"The checkpoint has {len(state_dict)} keys: {_describe(state_dict)}. "
                 "Pick the preset / flags that built it (channel_mult, num_res_blocks, attention_resolutions, ...).")
    raise ADMCheckpointError("\n".join(parts))

