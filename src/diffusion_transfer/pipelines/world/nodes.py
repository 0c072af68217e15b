"""The ``world`` pipeline: builds FaceWorld's models.

Its outputs are committed under ``data/06_models/world/`` so that a fresh
clone never needs to run it; run it to rebuild them (about 90 minutes on two
CPU cores). The outputs are their own catalog entries (``built_*``) under the
environment's data root: ``base`` rewrites the committed folders, ``smoke``
writes to ``data/smoke/06_models/world/`` and never overwrites them."""

from __future__ import annotations

from typing import Any



def train_source(world: dict[str, Any], schedule: dict[str, Any]):
    from diffusion_transfer.core.world.source import train_source_model

    from diffusion_transfer.pipelines.schedule import model_schedule

    src = world["source"]
    return train_source_model(src.get("unet", {}), src["train"], src["n_images"],
                              schedule=model_schedule(None, schedule),
                              seed=src.get("seed", 0), loss=src.get("loss"), checkpoint_dir=src.get("checkpoint_dir"))


def train_clip(world: dict[str, Any]):
    """The curation CLIP (``world.clip``), with its held-out metrics."""
    return _train_world_clip(world, "clip")


def _train_world_clip(world: dict[str, Any], key: str):
    import open_clip

    from diffusion_transfer.core.world.clip import MODEL_NAME, WorldClip
    from diffusion_transfer.core.world.clip_eval import held_out_metrics
    from diffusion_transfer.core.world.clip_train import DEFAULT_CLIP_CONFIG, train_world_clip

    model = train_world_clip({**_as_dict(DEFAULT_CLIP_CONFIG), **world.get(key, {})}, seed=world.get("seed", 0))
    trained = WorldClip(model, open_clip.get_tokenizer(MODEL_NAME), None, MODEL_NAME, "trained (float32)")
    model.world_clip_metrics = held_out_metrics(trained)  # written into world_clip.json
    return model


def train_evaluation_clip(world: dict[str, Any]):
    """The CLIP of the edit stage (Asyrp's loss and S_dir): the curation CLIP's
    recipe with age pairs added (``world.evaluation_clip``), so that it reads
    *young* and *old*; the curation CLIP stays as it is (docs/FACEWORLD.md)."""
    return _train_world_clip(world, "evaluation_clip")


def train_classifier(world: dict[str, Any]):
    from diffusion_transfer.core.world.classifier_train import DEFAULT_CLASSIFIER_CONFIG, train_attribute_classifier

    return train_attribute_classifier({**_as_dict(DEFAULT_CLASSIFIER_CONFIG), **world.get("classifier", {})},
                                      seed=world.get("seed", 0))


def _as_dict(cfg: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)
