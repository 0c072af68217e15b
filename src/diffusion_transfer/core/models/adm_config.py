"""The guided-diffusion / improved-diffusion (ADM) UNet architecture, the
``UNet2DModel`` that computes the same function (why each setting matches:
:mod:`.adm`) and the noise schedule the checkpoint was trained with."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .checkpoint_text import comma_tuple

GROUPS = 32  # GroupNorm32 in guided-diffusion's nn.normalization
NORM_EPS = 1e-5  # nn.GroupNorm's default, which GroupNorm32 keeps


class ADMCheckpointError(ValueError):
    """The checkpoint cannot be converted; the message says which keys / why."""


class ADMCheckpointNotFoundError(ADMCheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a ``FileNotFoundError``)."""



class ADMConfig(BaseModel):
    """The guided-diffusion / improved-diffusion ``create_model_and_diffusion``
    arguments that shape the UNet, the function of t it computes and its schedule.

    The defaults are the P2-weighting FFHQ model (:data:`FFHQ_P2`). Unknown keys
    are rejected (naming the key), so a misspelt field never passes silently.
    improved-diffusion's ``UNetModel`` is guided-diffusion's with
    ``num_head_channels=-1, resblock_updown=False, use_new_attention_order=False``
    (:data:`IMPROVED_IMAGENET64`).
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
    class_cond: bool = Field(False, description="class-conditional model (label_emb -> class_embedding)")
    num_classes: int = Field(1000, ge=1, description="classes of a class_cond model (ADM: NUM_CLASSES = 1000)")
    diffusion_steps: int = Field(1000, ge=1, description="training timesteps T (--diffusion_steps)")
    noise_schedule: Literal["linear", "cosine"] = Field("linear", description="beta schedule: linear or cosine")
    rescale_timesteps: bool = Field(
        False, description="the net was fed t * 1000 / diffusion_steps (improved-diffusion's default: true)"
    )

    @field_validator("channel_mult", "attention_resolutions", mode="before")
    @classmethod
    def _split_strings(cls, value: Any) -> Any:
        return comma_tuple(value)

    @field_validator("channel_mult", "attention_resolutions")
    @classmethod
    def _positive_entries(cls, value: tuple[int | float, ...]) -> tuple[int | float, ...]:
        if any(v <= 0 for v in value):
            raise ValueError(f"entries must be positive, got {value}")
        return value

    @model_validator(mode="after")
    def _convertible(self) -> ADMConfig:
        # These are the cases where diffusers' UNet2DModel cannot express the ADM net.
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

    def _attention_layers(self) -> dict[str, tuple[int, int]]:
        """Each diffusers attention module of this net: (channels, ADM's heads)."""
        chans, last = self.block_channels, len(self.channel_mult) - 1
        layers = {"mid_block.attentions.0": (chans[-1], self.heads(chans[-1]))}  # the mid block always attends
        for level in sorted(self.attention_levels):
            for j in range(self.num_res_blocks):
                layers[f"down_blocks.{level}.attentions.{j}"] = (chans[level], self.heads(chans[level]))
            for j in range(self.num_res_blocks + 1):
                layers[f"up_blocks.{last - level}.attentions.{j}"] = (chans[level], self.heads(chans[level], True))
        return layers

    @property
    def head_dim(self) -> int:
        """The ``attention_head_dim`` of the diffusers config. diffusers gives every
        attention layer ``channels // attention_head_dim`` heads; where ADM's head
        width varies between layers (a fixed ``num_heads`` over levels of different
        channel counts, as in improved-diffusion) this is the largest width that
        divides every attended channel count, and :meth:`attention_heads` lists the
        layers whose head count differs from the one it gives."""
        layers = self._attention_layers().values()
        if self.num_head_channels > 0:
            bad = sorted({c for c, _ in layers if c % self.num_head_channels})
            if bad:
                raise ValueError(
                    f"num_head_channels {self.num_head_channels} does not divide the attention channels {bad}"
                )
            return self.num_head_channels
        bad = sorted({f"{c} channels / {h} heads" for c, h in layers if c % h})
        if bad:
            raise ValueError(f"num_heads / num_heads_upsample must divide the attention channels: {bad}")
        widths = {c // h for c, h in layers}
        return widths.pop() if len(widths) == 1 else math.gcd(*(c for c, _ in layers))

    def attention_heads(self) -> dict[str, int]:
        """ADM's head count for every diffusers attention module whose head count
        is not ``channels // head_dim`` (empty when one head width fits all)."""
        dim = self.head_dim
        return {name: h for name, (c, h) in self._attention_layers().items() if c // dim != h}

    @property
    def timestep_scale(self) -> float:
        """What ADM's diffusion multiplies t by before the net sees it."""
        return 1000.0 / self.diffusion_steps if self.rescale_timesteps else 1.0


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

#: improved-diffusion's unconditional ImageNet 64x64 model (``imagenet64_uncond_100M_1500K.pt``, the
#: model A3FT fine-tunes): its README flags (--image_size 64 --num_channels 128 --num_res_blocks 3
#: --learn_sigma True, --diffusion_steps 4000 --noise_schedule cosine) over script_util.py's defaults
#: (channel_mult (1, 2, 3, 4) for 64x64, attention_resolutions "16,8", num_heads 4, dropout 0,
#: use_scale_shift_norm True, rescale_timesteps True) and improved-diffusion's fixed UNetModel options
#: (conv resamplers, legacy QKV order, a fixed head count).
IMPROVED_IMAGENET64 = ADMConfig(
    image_size=64,
    num_channels=128,
    num_res_blocks=3,
    channel_mult=(1, 2, 3, 4),
    attention_resolutions=(16, 8),
    num_heads=4,
    num_head_channels=-1,
    use_scale_shift_norm=True,
    resblock_updown=False,
    learn_sigma=True,
    use_new_attention_order=False,
    dropout=0.0,
    diffusion_steps=4000,
    noise_schedule="cosine",
    rescale_timesteps=True,
)

#: improved-diffusion's class-conditional ImageNet 64x64 model (``imagenet64_cond_270M_250K.pt``):
#: README flags --num_channels 192 --class_cond True --rescale_timesteps False, otherwise as above.
IMPROVED_IMAGENET64_COND = ADMConfig(**{
    **IMPROVED_IMAGENET64.model_dump(), "num_channels": 192, "class_cond": True, "rescale_timesteps": False,
})

PRESETS: dict[str, ADMConfig] = {
    "ffhq_p2": FFHQ_P2,
    "improved_imagenet64": IMPROVED_IMAGENET64,
    "improved_imagenet64_cond": IMPROVED_IMAGENET64_COND,
}


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
        **_time_embedding(cfg),
        "num_class_embeds": cfg.num_classes if cfg.class_cond else None,  # ADM's label_emb, added to emb
        "class_embed_type": None,
        "flip_sin_to_cos": True,  # ADM: cat([cos, sin])
        "freq_shift": 0,  # ADM divides the exponent by half, not half - shift
        "act_fn": "silu",
        "dropout": cfg.dropout,
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
    }



def _time_embedding(cfg: ADMConfig) -> dict[str, Any]:
    if cfg.timestep_scale == 1.0:
        return {"time_embedding_type": "positional"}
    # The net saw sin/cos of t * 1000 / T, which diffusers' sinusoid cannot scale: a table of
    # ADM's embedding at every integer t (time_proj.weight, filled by the converter).
    return {"time_embedding_type": "learned", "num_train_timesteps": cfg.diffusion_steps}


def adm_scheduler_config(cfg: ADMConfig) -> dict[str, Any] | None:
    """The diffusers ``scheduler_config.json`` of ``cfg``'s diffusion, or None
    when it is DDPM's linear schedule at T=1000 (what a model folder without
    one already means here: ``core/parameterization.py``).

    ADM's linear betas run from ``1e-4 * 1000 / T`` to ``0.02 * 1000 / T``
    (``get_named_beta_schedule``); its cosine one is diffusers' ``squaredcos_cap_v2``.
    """
    config: dict[str, Any] = {"_class_name": "DDPMScheduler", "num_train_timesteps": cfg.diffusion_steps,
                              "prediction_type": "epsilon"}
    if cfg.noise_schedule == "cosine":
        config["beta_schedule"] = "squaredcos_cap_v2"
    elif cfg.diffusion_steps == 1000:
        return None
    else:
        scale = 1000 / cfg.diffusion_steps
        config.update(beta_schedule="linear", beta_start=scale * 0.0001, beta_end=scale * 0.02)
    if cfg.learn_sigma:  # ADM's LEARNED_RANGE: the net interpolates log beta_t and log beta~_t
        config["variance_type"] = "learned_range"
    return config
