"""The evaluate node of the method template (un-namespaced; see
``pipelines/method_run.py``)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.pipelines.evaluate.nodes import evaluate


def create_evaluate_pipeline() -> Pipeline:
    return Pipeline([
        node(evaluate,
             ["source_samples", "target_samples", "curated", "reference", "evaluation_clip",
              "attribute_classifier", "params:evaluation", "params:dataset"],
             "metrics", name="evaluate", tags=["evaluate"]),
    ])
