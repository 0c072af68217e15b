"""The evaluate node of the method template (un-namespaced; see
``pipelines/method_run.py``)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.pipelines.evaluate.nodes import evaluate, evaluate_text_to_image


def create_evaluate_pipeline() -> Pipeline:
    return Pipeline([
        node(evaluate,
             ["source_samples", "target_samples", "curated", "reference", "evaluation_clip",
              "attribute_classifier", "params:evaluation", "params:dataset"],
             "metrics", name="evaluate", tags=["evaluate"]),
    ])


def create_text_to_image_evaluate_pipeline() -> Pipeline:
    """A text-to-image run's metrics (issue 34): FID/KID, the CLIP score and
    the retention of the concepts the training set lacks."""
    return Pipeline([
        node(evaluate_text_to_image,
             ["source_prompt_samples", "target_samples", "source_absent_samples", "finetuned_absent_samples",
              "curated", "reference", "evaluation_clip", "attribute_classifier", "params:evaluation",
              "params:dataset"],
             "metrics", name="evaluate", tags=["evaluate"]),
    ])
