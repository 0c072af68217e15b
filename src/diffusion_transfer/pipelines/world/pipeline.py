"""``world``: FaceWorld's models (the curation CLIP, the evaluation CLIP, the attribute
classifier, the source model, and the latent world's VQ autoencoder and class-conditional
latent source model; the text world's text-to-image latent model)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.pipelines.world.nodes import (
    train_classifier,
    train_clip,
    train_evaluation_clip,
    train_source,
    train_world_autoencoder,
    train_world_latent_source,
    train_world_text_source,
)


def create_pipeline() -> Pipeline:
    return Pipeline(
        [
            node(train_clip, "params:world", "built_world_clip", name="train_world_clip", tags=["world"]),
            node(train_evaluation_clip, "params:world", "built_world_evaluation_clip",
                 name="train_world_evaluation_clip", tags=["world"]),
            node(train_classifier, "params:world", "built_attribute_classifier", name="train_attribute_classifier",
                 tags=["world"]),
            node(train_source, ["params:world", "params:schedule"], "built_source_model", name="train_source_model",
                 tags=["world"]),
            node(train_world_autoencoder, "params:world", "built_world_autoencoder",
                 name="train_world_autoencoder", tags=["world", "latent_world"]),
            node(train_world_latent_source, ["params:world", "params:schedule", "built_world_autoencoder"],
                 "built_latent_source_model", name="train_world_latent_source", tags=["world", "latent_world"]),
            node(train_world_text_source, ["params:world", "params:schedule", "built_world_autoencoder"],
                 "built_text_source_model", name="train_world_text_source", tags=["world", "text_world"]),
        ]
    )
