"""The ``world`` pipeline: builds FaceWorld's three models.

Its outputs are committed under ``data/06_models/world/`` so that a fresh
clone never needs to run it; run it to rebuild them (about an hour on two CPU
cores). The outputs are their own catalog entries (``built_*``) under the
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
    from diffusion_transfer.core.world.clip_train import DEFAULT_CLIP_CONFIG, train_world_clip

    return train_world_clip({**_as_dict(DEFAULT_CLIP_CONFIG), **world.get("clip", {})}, seed=world.get("seed", 0))


def train_classifier(world: dict[str, Any]):
    from diffusion_transfer.core.world.classifier_train import DEFAULT_CLASSIFIER_CONFIG, train_attribute_classifier

    return train_attribute_classifier({**_as_dict(DEFAULT_CLASSIFIER_CONFIG), **world.get("classifier", {})},
                                      seed=world.get("seed", 0))


def _as_dict(cfg: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)
