"""FaceWorld's text world (issue 34): a small text-to-image latent model, the
stand-in for Stable Diffusion, trained on FaceWorld renders and their captions.

- **Autoencoder**: the world's committed VQ-f2 (:mod:`.autoencoder`, the
  latent source's), rewritten as the ``AutoencoderKL`` a Stable Diffusion
  folder holds in ``vae/`` (:func:`vq_as_kl`): the same encoder, convolutions
  and decoder, the mean being the VQ's pre-quantisation latent and the log
  variance -30 (a point mass); decoding skips the quantiser.
  ``StableDiffusionPipeline`` decodes with ``vae.decode(z, generator=...)``,
  which a ``VQModel`` does not take.
- **Text encoder**: a small ``transformers.CLIPTextModel`` (2 layers, width
  64) with a CLIP tokenizer of FaceWorld's caption words (:mod:`.text_tokenizer`),
  trained from scratch jointly with the UNet, as LDM trains its text-to-image
  model's transformer (Rombach et al. 2022, eq. 3). The world CLIP's text tower
  is an open_clip model under a custom config with CLIP's 49k-token BPE: it
  would need a weight conversion to load as a ``CLIPTextModel``.
- **UNet**: a ``UNet2DConditionModel`` (2.2M parameters, cross-attention
  at 8 and 4 px) on the frozen autoencoder's scaled 3x16x16 latents; DDPM's
  linear schedule (the world's), the plain denoising loss, captions (the
  canonical one or a random variant, :mod:`.captions`) dropped to the empty
  prompt 10% of the time for classifier-free guidance, EMA.

The result carries its codec, text conditioning, scheduler config and a
``StableDiffusionPipeline`` index (no safety checker), so ``save_unet`` writes
the Stable Diffusion layout that ``StableDiffusionPipeline.from_pretrained``
and the project (a source folder) load.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion_transfer.core.data.images import to_tensor
from diffusion_transfer.core.models.latent import LatentCodec, attach_latent_codec
from diffusion_transfer.core.models.pipeline_folder import attach_pipeline_index
from diffusion_transfer.core.models.scheduler_config import attach_scheduler_config
from diffusion_transfer.core.models.text_to_image import TEXT_PARTS, TextConditioning, attach_text_conditioning
from diffusion_transfer.core.schedule import NoiseSchedule, make_schedule, randn, sample_timesteps
from diffusion_transfer.core.training import TrainConfig, train
from diffusion_transfer.core.world.autoencoder import LATENT_DOMAIN
from diffusion_transfer.core.world.captions import caption, caption_variants
from diffusion_transfer.core.world.common import torch_threads
from diffusion_transfer.core.world.domains import render_batch
from diffusion_transfer.core.world.text_tokenizer import build_tokenizer

#: The UNet (2.2M parameters): cross-attention to the captions at 8 and 4 px and in the middle.
DEFAULT_TEXT_UNET: dict[str, Any] = {
    "sample_size": 16,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 80],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 4,  # diffusers' name for the number of heads
    "norm_num_groups": 16,
}

#: The text encoder: a two-layer CLIP text transformer of width 64 (the UNet's cross_attention_dim).
DEFAULT_TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 32,  # the longest caption variant is 30 tokens with its start and end
}

#: ``model_index.json`` of the saved folder: Stable Diffusion's, with a DDIM scheduler and no safety checker.
SD_INDEX = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
            "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}


def vq_as_kl(vq: torch.nn.Module):
    """The ``VQModel`` ``vq`` as an ``AutoencoderKL``: its encoder, ``quant_conv``
    (the mean), ``post_quant_conv`` and decoder; the log variance is -30 (std
    3e-7), so ``latent_dist.mode()`` and ``sample()`` are the VQ's
    pre-quantisation latent. Decoding does not quantise."""
    from diffusers import AutoencoderKL  # deferred: diffusers takes seconds to import

    cfg = vq.config
    kl = AutoencoderKL(in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                       down_block_types=tuple(cfg.down_block_types), up_block_types=tuple(cfg.up_block_types),
                       block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                       act_fn=cfg.act_fn, latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
                       sample_size=cfg.sample_size, scaling_factor=cfg.scaling_factor,
                       mid_block_add_attention=cfg.mid_block_add_attention)
    c = int(cfg.latent_channels)
    state = {k: v for k, v in vq.state_dict().items() if not k.startswith(("quantize.", "encoder.conv_out.",
                                                                            "quant_conv."))}
    conv_out_w = torch.zeros_like(kl.encoder.conv_out.weight)
    conv_out_w[:c] = vq.encoder.conv_out.weight  # the mean's channels; the log variance's read nothing
    conv_out_b = torch.zeros_like(kl.encoder.conv_out.bias)
    conv_out_b[:c] = vq.encoder.conv_out.bias
    quant_w = torch.zeros_like(kl.quant_conv.weight)
    quant_w[:c, :c] = vq.quant_conv.weight
    quant_b = torch.full_like(kl.quant_conv.bias, -30.0)  # log variance -30: DiagonalGaussian's floor
    quant_b[:c] = vq.quant_conv.bias
    state.update({"encoder.conv_out.weight": conv_out_w, "encoder.conv_out.bias": conv_out_b,
                  "quant_conv.weight": quant_w, "quant_conv.bias": quant_b})
    kl.load_state_dict(state, strict=True)
    return kl.eval().requires_grad_(False)


def build_text_unet(config: dict[str, Any], cross_attention_dim: int):
    """A randomly initialised ``UNet2DConditionModel`` from :data:`DEFAULT_TEXT_UNET` updated by ``config``."""
    from diffusers import UNet2DConditionModel  # deferred: diffusers takes seconds to import

    cfg = {**DEFAULT_TEXT_UNET, **config, "cross_attention_dim": int(cross_attention_dim)}
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
        cfg[key] = tuple(cfg[key])
    return UNet2DConditionModel(**cfg)


def build_text_encoder(config: dict[str, Any], tokenizer):
    """A randomly initialised ``CLIPTextModel`` over ``tokenizer``'s vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel  # deferred: transformers takes seconds to import

    cfg = {**DEFAULT_TEXT_ENCODER, **config}
    return CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                        **cfg))


class TextToImageNet(torch.nn.Module):
    """The UNet and the text encoder as one module, so that the training loop
    (its optimizer, EMA and checkpoints) trains them jointly."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, encoder_hidden_states=self.text_encoder(ids)[0]).sample


def caption_bank(attrs: list, n_captions: int, seed: int) -> list[list[str]]:
    """Per image: its canonical caption and ``n_captions - 1`` random variants
    (synonyms, word order, hair, skin, background, age), deterministic in ``seed``."""
    out = []
    for i, a in enumerate(attrs):
        rng = np.random.default_rng([int(seed), 34, i])
        out.append([caption(a)] + [caption_variants(a, rng) for _ in range(n_captions - 1)])
    return out


class TextDenoisingLoss:
    """``loss_fn(student, images, ..., condition=ids)``: the plain denoising loss
    on the frozen codec's latents of ``images``, conditioned on one of each
    image's tokenized captions (``condition``: (B, K, L) token ids), picked at
    random; a ``caption_dropout`` share replaced by the empty prompt."""

    def __init__(self, codec: LatentCodec, schedule: NoiseSchedule, empty_ids: torch.Tensor,
                 caption_dropout: float = 0.1):
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout}")
        self.codec, self.schedule = codec, schedule
        self.empty_ids, self.caption_dropout = empty_ids.reshape(-1).long(), float(caption_dropout)

    def __call__(self, student, images: torch.Tensor, teacher=None, generator=None,
                 condition: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        if condition is None:
            raise ValueError("the text source's loss needs each image's token ids (train(conditions=ids))")
        z = self.codec.encode(images, batch_size=len(images))
        gen_device = generator.device if generator is not None else "cpu"
        k = torch.randint(condition.shape[1], (len(z),), generator=generator, device=gen_device).cpu()
        ids = condition.cpu()[torch.arange(len(z)), k].long()
        drop = torch.rand(len(z), generator=generator, device=gen_device).cpu() < self.caption_dropout
        ids = torch.where(drop[:, None], self.empty_ids[None, :], ids).to(z.device)
        t = sample_timesteps(len(z), self.schedule.num_timesteps, z, generator)
        noise = randn(tuple(z.shape), z, generator)
        out = student(self.schedule.q_sample(z, t, noise), t, ids)
        loss = ((out - self.schedule.training_target(z, noise, t)) ** 2).mean()
        return {"loss": loss}


def _renders_and_ids(tokenizer, n_images: int, size: int, n_captions: int, seed: int):
    images, attrs = render_batch(LATENT_DOMAIN, n_images, size, seed)
    texts = [t for row in caption_bank(attrs, n_captions, seed) for t in row]
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    return to_tensor(images), ids.reshape(n_images, n_captions, -1).float()


def train_text_source(
    autoencoder: torch.nn.Module,
    unet: dict[str, Any] | None,
    text_encoder: dict[str, Any] | None,
    train_config: dict[str, Any],
    n_images: int,
    schedule: NoiseSchedule | dict[str, Any] | None = None,
    seed: int = 0,
    caption_dropout: float = 0.1,
    n_captions: int = 8,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    num_threads: int | None = 1,
):
    """Train the text-to-image UNet and its text encoder from scratch on
    ``n_images`` renders of :data:`LATENT_DOMAIN` (photos, portraits, artworks)
    with their captions, in the latent space of the frozen ``autoencoder`` (the
    world's ``VQModel``). Returns the EMA UNet with its codec (as an
    ``AutoencoderKL``), text conditioning, scheduler config and Stable Diffusion
    index attached; ``model.train_info`` holds the settings and the wall time."""
    t0 = time.perf_counter()
    codec = LatentCodec(vq_as_kl(autoencoder), "vae")
    tokenizer = build_tokenizer(max_length=int({**DEFAULT_TEXT_ENCODER, **(text_encoder or {})}
                                               ["max_position_embeddings"]))
    size = int({**DEFAULT_TEXT_UNET, **(unet or {})}["sample_size"]) * codec.downscale
    images, ids = _renders_and_ids(tokenizer, n_images, size, n_captions, seed)
    sched = schedule if isinstance(schedule, NoiseSchedule) else make_schedule(**(schedule or {}))
    with torch_threads(num_threads):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = build_text_encoder(text_encoder or {}, tokenizer)
            net = build_text_unet({**(unet or {}), "in_channels": codec.latent_channels,
                                   "out_channels": codec.latent_channels}, encoder.config.hidden_size)
            model = TextToImageNet(net, encoder)
        empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                          return_tensors="pt").input_ids
        loss = TextDenoisingLoss(codec, sched, empty, caption_dropout)
        result = train(model, loss, images, TrainConfig(**train_config), conditions=ids, latents=False,
                       checkpoint_dir=checkpoint_dir, progress=progress, desc="text source model")
    final = result.final_model
    out = final.unet.eval()
    # saved with it: sampled as it was trained; latents of unit variance must not be clipped to [-1, 1]
    # (diffusers' DDIM clips x0 unless told not to, as Stable Diffusion's scheduler config does)
    attach_scheduler_config(out, {**sched.scheduler_config(), "clip_sample": False})
    attach_latent_codec(out, codec)
    attach_text_conditioning(out, TextConditioning(final.text_encoder.eval(), tokenizer, TEXT_PARTS))
    attach_pipeline_index(out, dict(SD_INDEX))
    out.train_info = {"n_images": n_images, "seed": seed, "caption_dropout": caption_dropout,
                      "n_captions": n_captions, "wall_s": round(time.perf_counter() - t0, 1),
                      "final": result.history[-1] if result.history else None}
    return out


__all__ = ["DEFAULT_TEXT_ENCODER", "DEFAULT_TEXT_UNET", "SD_INDEX", "TextDenoisingLoss", "TextToImageNet",
           "build_text_encoder", "build_text_unet", "caption_bank", "train_text_source", "vq_as_kl"]
