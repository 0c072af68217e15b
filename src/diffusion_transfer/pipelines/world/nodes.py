"""The ``world`` pipeline: builds FaceWorld's models.

Its outputs are committed under ``data/06_models/world/`` so that a fresh
clone never needs to run it; run it to rebuild them (about 90 minutes on two
CPU cores, and the latent world's autoencoder and source model besides:
docs/FACEWORLD.md). The outputs are their own catalog entries (``built_*``) under the
environment's data root: ``base`` rewrites the committed folders, ``smoke``
writes to ``data/smoke/06_models/world/`` and never overwrites them."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

from diffusion_transfer.core.world.autoencoder import train_autoencoder
from diffusion_transfer.core.world.classifier_train import DEFAULT_CLASSIFIER_CONFIG, train_attribute_classifier
from diffusion_transfer.core.world.latent_source import train_latent_source
from diffusion_transfer.core.world.source import train_source_model
from diffusion_transfer.core.world.text_source import train_text_source
from diffusion_transfer.pipelines.schedule import model_schedule


def train_source(world: dict[str, Any], schedule: dict[str, Any]):
    src = world["source"]
    return train_source_model(src.get("unet", {}), src["train"], src["n_images"],
                              schedule=model_schedule(None, schedule),
                              seed=src.get("seed", 0), loss=src.get("loss"), checkpoint_dir=src.get("checkpoint_dir"))


def train_world_autoencoder(world: dict[str, Any]):
    """The latent world's VQ autoencoder (``world.autoencoder``), trained on renders of the latent classes."""
    ae = world["autoencoder"]
    return train_autoencoder(ae.get("config", {}), ae["train"], ae["n_images"], seed=ae.get("seed", 0),
                             restart_every=ae.get("restart_every", 25), checkpoint_dir=ae.get("checkpoint_dir"))


def train_world_latent_source(world: dict[str, Any], schedule: dict[str, Any], autoencoder):
    """The class-conditional latent source model (``world.latent_source``) on the frozen autoencoder."""
    src = world["latent_source"]
    return train_latent_source(autoencoder, src.get("unet", {}), src["train"], src["n_images"],
                               schedule=model_schedule(None, schedule), seed=src.get("seed", 0),
                               label_dropout=src.get("label_dropout", 0.1), checkpoint_dir=src.get("checkpoint_dir"))


def train_world_text_source(world: dict[str, Any], schedule: dict[str, Any], autoencoder):
    """The text world's text-to-image latent model (``world.text_source``, issue 34) on the frozen autoencoder."""
    src = world["text_source"]
    return train_text_source(autoencoder, src.get("unet", {}), src.get("text_encoder", {}), src["train"],
                             src["n_images"], schedule=model_schedule(None, schedule), seed=src.get("seed", 0),
                             caption_dropout=src.get("caption_dropout", 0.1), n_captions=src.get("n_captions", 8),
                             checkpoint_dir=src.get("checkpoint_dir"))


def train_clip(world: dict[str, Any]):
    """The curation CLIP (``world.clip``), with its held-out metrics."""
    return _train_world_clip(world, "clip")


def _train_world_clip(world: dict[str, Any], key: str):
    # deferred: open_clip (~0.5 s), which the registry and the other stages' runs do not need
    import open_clip

    # deferred: these import open_clip at their top
    from diffusion_transfer.core.world import clip as world_clip, clip_eval, clip_train

    config = {**_as_dict(clip_train.DEFAULT_CLIP_CONFIG), **world.get(key, {})}
    model = clip_train.train_world_clip(config, seed=world.get("seed", 0))
    name = world_clip.MODEL_NAME
    trained = world_clip.WorldClip(model, open_clip.get_tokenizer(name), None, name, "trained (float32)")
    model.world_clip_metrics = clip_eval.held_out_metrics(trained)  # written into world_clip.json
    return model


def train_evaluation_clip(world: dict[str, Any]):
    """The CLIP of the edit stage (Asyrp's loss and S_dir): the curation CLIP's
    recipe with age pairs added (``world.evaluation_clip``), so that it reads
    *young* and *old*; the curation CLIP stays as it is (docs/FACEWORLD.md)."""
    return _train_world_clip(world, "evaluation_clip")


def train_classifier(world: dict[str, Any]):
    return train_attribute_classifier({**_as_dict(DEFAULT_CLASSIFIER_CONFIG), **world.get("classifier", {})},
                                      seed=world.get("seed", 0))


def _as_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)
