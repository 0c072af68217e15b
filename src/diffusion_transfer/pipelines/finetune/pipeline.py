"""The fine-tuning nodes of the method template (un-namespaced; see
``pipelines/method_run.py``)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.core.methods.registry import MethodInfo
from diffusion_transfer.pipelines.finetune.nodes import (caption_conditions, embed_conditions, finetune,
                                                         finetune_guided, finetune_with_class_images,
                                                         generate_class_images)


def create_finetune_pipeline(info: MethodInfo) -> Pipeline:
    """Plain, conditional (ANL: CLIP embeddings of the training images
    condition training) or guided (TAN: the dataset's noisy domain classifier
    guides training)."""
    train_inputs = ["source_model", "curated", "params:method", "params:dataset", "params:train", "params:schedule",
                    "params:paths.checkpoints"]
    if info.conditional:
        return Pipeline([
            node(embed_conditions, ["curated", "condition_clip", "params:method", "params:dataset"],
                 "training_conditions", name="embed_conditions", tags=["train"]),
            node(finetune, train_inputs + ["training_conditions"], ["finetuned_model", "training_history"],
                 name="finetune", tags=["train"]),
        ])
    if info.guided:
        return Pipeline([
            node(finetune_guided, train_inputs + ["domain_classifier"], ["finetuned_model", "training_history"],
                 name="finetune", tags=["train"]),
        ])
    return Pipeline([
        node(finetune, train_inputs, ["finetuned_model", "training_history"], name="finetune", tags=["train"]),
    ])


def create_text_to_image_finetune_pipeline(info: MethodInfo) -> Pipeline:
    """A text-to-image source (issue 34): the training captions' hidden states
    condition training (naive, sdft, attn, dreambooth; full or LoRA); DreamBooth
    first samples its class images from the source model (cached)."""
    train_inputs = ["source_model", "curated", "params:method", "params:dataset", "params:train", "params:schedule",
                    "params:paths.checkpoints", "training_conditions"]
    nodes = [node(caption_conditions, ["curated", "source_model", "params:dataset"], "training_conditions",
                  name="encode_captions", tags=["train"])]
    if info.class_images:
        nodes.append(node(generate_class_images, ["source_model", "params:method", "params:dataset", "params:train",
                                                  "params:paths.checkpoints"], "class_images",
                          name="generate_class_images", tags=["train"]))
        return Pipeline(nodes + [node(finetune_with_class_images, train_inputs + ["class_images"],
                                      ["finetuned_model", "training_history"], name="finetune", tags=["train"])])
    return Pipeline(nodes + [node(finetune, train_inputs, ["finetuned_model", "training_history"], name="finetune",
                                  tags=["train"])])
