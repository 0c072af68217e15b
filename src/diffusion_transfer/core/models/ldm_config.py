"""The CompVis latent-diffusion (LDM) architectures the converter reads --
the class-conditional UNet with SpatialTransformer cross-attention, the VQ
autoencoder, the noise schedule -- and the diffusers settings that compute the
same functions (why each setting matches: :mod:`.ldm`).

Field names are those of the CompVis YAML configs (``unet_config.params``,
``first_stage_config.params`` with its ``ddconfig`` flattened in,
``cond_stage_config.params.n_classes``, ``linear_start`` ...), so a config can
be checked against the YAML line by line. :data:`CIN256_V2` is
``configs/latent-diffusion/cin256-v2.yaml``, :data:`VQ_F4` its first stage
(``models/first_stage_models/vq-f4/config.yaml``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .checkpoint_text import comma_tuple

GROUPS = 32  # every GroupNorm in both networks has 32 groups
UNET_NORM_EPS = 1e-5  # openaimodel's GroupNorm32 (nn.GroupNorm's default eps)


class LDMCheckpointError(ValueError):
    """The checkpoint cannot be converted; the message says which keys / why."""


class LDMCheckpointNotFoundError(LDMCheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a ``FileNotFoundError``)."""



def _check_levels(chans: tuple[int, ...], size: int, what: str) -> None:
    if any(c % GROUPS for c in chans):
        raise ValueError(f"every {what} level's channel count must be a multiple of {GROUPS} (GroupNorm), got {chans}")
    factor = 2 ** (len(chans) - 1)
    if size % factor:
        raise ValueError(f"{what} size {size} must be divisible by 2**(levels-1) = {factor}")


class LDMUNetConfig(BaseModel):
    """``ldm.modules.diffusionmodules.openaimodel.UNetModel`` with
    ``use_spatial_transformer=True`` (the only kind converted), ``legacy=True``,
    ``resblock_updown=False``, ``use_scale_shift_norm=False``, conv resamplers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(64, ge=1, description="latent resolution the UNet was trained at")
    in_channels: int = Field(3, ge=1, description="latent channels in")
    out_channels: int = Field(3, ge=1, description="channels out (eps)")
    model_channels: int = Field(192, ge=1, description="base channel count")
    attention_resolutions: tuple[int, ...] = Field(
        (8, 4, 2), description="downsampling RATES with a SpatialTransformer (LDM's convention: 1 = full size)"
    )
    num_res_blocks: int = Field(2, ge=1, description="ResBlocks per level on the way down")
    channel_mult: tuple[int, ...] = Field((1, 2, 3, 5), min_length=1, description="channel multiplier per level")
    num_heads: int = Field(1, description="attention heads (used when num_head_channels is -1)")
    num_head_channels: int = Field(-1, description="channels per head, overrides num_heads; -1 = use num_heads")
    transformer_depth: int = Field(1, ge=1, description="BasicTransformerBlocks per SpatialTransformer")
    context_dim: int = Field(512, ge=1, description="cross-attention context width (the class embedding's)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout (training only)")

    @field_validator("channel_mult", "attention_resolutions", mode="before")
    @classmethod
    def _split_strings(cls, value: Any) -> Any:
        return comma_tuple(value)

    @model_validator(mode="after")
    def _convertible(self) -> LDMUNetConfig:
        if self.channel_mult[0] != 1:
            # LDM sizes the timestep embedding by model_channels, diffusers by block_out_channels[0].
            raise ValueError(f"channel_mult[0] must be 1 (got {self.channel_mult[0]}): diffusers sizes "
                             "the time embedding by the first level's channels")
        if any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"channel_mult entries must be positive, got {self.channel_mult}")
        _check_levels(self.block_channels, self.image_size, "UNet")
        rates = {2**level for level in range(len(self.channel_mult))}
        bad = sorted(set(self.attention_resolutions) - rates)
        if bad:
            raise ValueError(f"attention_resolutions {bad} are not downsampling rates of this UNet "
                             f"({sorted(rates)}); LDM lists rates (8 = 1/8 size), not resolutions")
        if self.num_head_channels == 0 or self.num_head_channels < -1:
            raise ValueError(f"num_head_channels must be positive or -1, got {self.num_head_channels}")
        if self.num_head_channels == -1 and self.num_heads < 1:
            raise ValueError(f"num_heads must be positive when num_head_channels is -1, got {self.num_heads}")
        for ch in self.block_channels:
            if self.num_head_channels > 0 and ch % self.num_head_channels:
                raise ValueError(f"num_head_channels {self.num_head_channels} does not divide {ch} channels")
            if self.num_head_channels == -1 and ch % self.num_heads:
                raise ValueError(f"num_heads {self.num_heads} does not divide {ch} channels")
        return self

    @property
    def block_channels(self) -> tuple[int, ...]:
        """Channels of each level, ``mult * model_channels``."""
        return tuple(m * self.model_channels for m in self.channel_mult)

    @property
    def attention_levels(self) -> frozenset[int]:
        """Levels with a SpatialTransformer: level L downsamples by ``2**L``."""
        return frozenset(lv for lv in range(len(self.channel_mult)) if 2**lv in self.attention_resolutions)

    @property
    def heads(self) -> tuple[int, ...]:
        """Heads of each level's SpatialTransformers (the middle block: the last level's).

        With ``legacy=True`` and a spatial transformer, openaimodel uses
        ``num_heads`` heads of ``ch // num_heads`` channels, or
        ``ch // num_head_channels`` heads of ``num_head_channels``."""
        if self.num_head_channels > 0:
            return tuple(ch // self.num_head_channels for ch in self.block_channels)
        return (self.num_heads,) * len(self.block_channels)


class VQConfig(BaseModel):
    """``ldm.models.autoencoder.VQModelInterface``: ``Encoder`` / ``Decoder`` of
    ``ldm.modules.diffusionmodules.model`` (``ddconfig``) and taming's
    ``VectorQuantizer2`` (``n_embed`` codes of ``embed_dim``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embed_dim: int = Field(3, ge=1, description="codebook vector width (quantised latent channels)")
    n_embed: int = Field(8192, ge=1, description="codebook size")
    z_channels: int = Field(3, ge=1, description="encoder output channels")
    resolution: int = Field(256, ge=1, description="image resolution")
    in_channels: int = Field(3, ge=1, description="image channels in")
    out_ch: int = Field(3, ge=1, description="image channels out")
    ch: int = Field(128, ge=1, description="base channel count")
    ch_mult: tuple[int, ...] = Field((1, 2, 4), min_length=1, description="channel multiplier per level")
    num_res_blocks: int = Field(2, ge=1, description="ResnetBlocks per encoder level (decoder: one more)")
    attn_resolutions: tuple[int, ...] = Field((), description="resolutions with attention (only () is supported)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout (training only)")
    double_z: bool = Field(False, description="must be False for a VQ model")

    @field_validator("ch_mult", "attn_resolutions", mode="before")
    @classmethod
    def _split_strings(cls, value: Any) -> Any:
        return comma_tuple(value)

    @model_validator(mode="after")
    def _convertible(self) -> VQConfig:
        if self.attn_resolutions:
            raise ValueError(f"attn_resolutions {self.attn_resolutions}: attention inside the autoencoder's levels "
                             "is not supported (vq-f4 has none; its middle blocks always attend)")
        if self.double_z:
            raise ValueError("double_z=True is a KL autoencoder, not a VQ one")
        if any(m <= 0 for m in self.ch_mult):
            raise ValueError(f"ch_mult entries must be positive, got {self.ch_mult}")
        _check_levels(self.block_channels, self.resolution, "autoencoder")
        return self

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)


#: ``models/first_stage_models/vq-f4/config.yaml`` (= cin256-v2's ``first_stage_config``).
VQ_F4 = VQConfig()


class LDMConfig(BaseModel):
    """A ``LatentDiffusion`` model: UNet, first stage, class embedder, schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unet: LDMUNetConfig = LDMUNetConfig()
    first_stage: VQConfig = VQ_F4
    n_classes: int = Field(1001, ge=1, description="ClassEmbedder rows (cin256-v2: 1000 classes + 1 'no class')")
    linear_start: float = Field(0.0015, gt=0.0, lt=1.0, description="first beta")
    linear_end: float = Field(0.0195, gt=0.0, lt=1.0, description="last beta")
    timesteps: int = Field(1000, ge=2, description="training timesteps")
    scale_factor: float = Field(1.0, gt=0.0, description="latents are scale_factor * encode(x)")

    @model_validator(mode="after")
    def _consistent(self) -> LDMConfig:
        if self.unet.in_channels != self.first_stage.embed_dim:
            raise ValueError(f"the UNet takes {self.unet.in_channels} channels but the autoencoder's latents "
                             f"have embed_dim={self.first_stage.embed_dim}")
        if self.linear_start >= self.linear_end:
            raise ValueError(f"linear_start {self.linear_start} must be below linear_end {self.linear_end}")
        return self


#: ``configs/latent-diffusion/cin256-v2.yaml`` (CompVis/latent-diffusion): no
#: ``scale_factor`` there, so LatentDiffusion's default 1.0.
CIN256_V2 = LDMConfig()

PRESETS: dict[str, LDMConfig] = {"cin256_v2": CIN256_V2}


def ldm_unet_config(cfg: LDMConfig) -> dict[str, Any]:
    """``UNet2DConditionModel`` keyword arguments that reproduce ``cfg``'s UNet
    and its class embedder (as the ``text_proj`` context projection)."""
    u = cfg.unet
    levels = range(len(u.channel_mult))
    attn = u.attention_levels
    return {
        "sample_size": u.image_size,
        "in_channels": u.in_channels,
        "out_channels": u.out_channels,
        "block_out_channels": u.block_channels,
        "layers_per_block": u.num_res_blocks,
        "down_block_types": tuple("CrossAttnDownBlock2D" if lv in attn else "DownBlock2D" for lv in levels),
        "mid_block_type": "UNetMidBlock2DCrossAttn",  # openaimodel's middle block always has a transformer
        "up_block_types": tuple("CrossAttnUpBlock2D" if lv in attn else "UpBlock2D" for lv in reversed(levels)),
        # diffusers reads attention_head_dim as the NUMBER of heads here (a known naming quirk).
        "attention_head_dim": u.heads,
        "transformer_layers_per_block": u.transformer_depth,
        "cross_attention_dim": u.context_dim,
        "use_linear_projection": False,  # LDM's proj_in / proj_out are 1x1 convs
        "encoder_hid_dim": cfg.n_classes,  # the ClassEmbedder: one-hot (B, 1, n_classes) -> (B, 1, context_dim)
        "encoder_hid_dim_type": "text_proj",
        "norm_num_groups": GROUPS,
        "norm_eps": UNET_NORM_EPS,
        "downsample_padding": 1,  # openaimodel's Downsample: 3x3 conv, stride 2, padding 1
        "flip_sin_to_cos": True,  # LDM's timestep_embedding is [cos, sin]
        "freq_shift": 0,  # exponents divided by half, not half - 1
        "act_fn": "silu",
        "resnet_time_scale_shift": "default",  # use_scale_shift_norm=False: h + emb
        "dropout": u.dropout,
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
        "upcast_attention": False,
        "only_cross_attention": False,
    }


def vq_model_config(cfg: LDMConfig, scale_factor: float | None = None) -> dict[str, Any]:
    """``VQModel`` keyword arguments that reproduce ``cfg``'s first stage
    (``scaling_factor``: ``scale_factor``, default ``cfg.scale_factor``)."""
    vq = cfg.first_stage
    n = len(vq.ch_mult)
    return {
        "in_channels": vq.in_channels,
        "out_channels": vq.out_ch,
        "down_block_types": ("DownEncoderBlock2D",) * n,
        "up_block_types": ("UpDecoderBlock2D",) * n,
        "block_out_channels": vq.block_channels,
        "layers_per_block": vq.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": vq.z_channels,
        "sample_size": vq.resolution,
        "num_vq_embeddings": vq.n_embed,
        "norm_num_groups": GROUPS,
        "vq_embed_dim": vq.embed_dim,
        "scaling_factor": cfg.scale_factor if scale_factor is None else float(scale_factor),
        "norm_type": "group",
        "mid_block_add_attention": True,
        "lookup_from_codebook": False,
        "force_upcast": False,
    }


def ldm_scheduler_config(cfg: LDMConfig) -> dict[str, Any]:
    """``DDIMScheduler`` keyword arguments for LDM's training schedule and its DDIM sampler.

    LDM's ``"linear"`` schedule is ``linspace(sqrt(start), sqrt(end))**2``,
    diffusers' ``"scaled_linear"``; LDM's DDIM steps are ``range(0, T, T/S) + 1``
    (``steps_offset=1``) and its last step goes to ``alphas_cumprod[0]``
    (``set_alpha_to_one=False``); the UNet predicts eps."""
    return {
        "num_train_timesteps": cfg.timesteps,
        "beta_start": cfg.linear_start,
        "beta_end": cfg.linear_end,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }
