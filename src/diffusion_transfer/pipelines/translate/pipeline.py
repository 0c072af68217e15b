"""Translation nodes: the source domain's translation inputs, and the method
template's translations, their metrics and grid (un-namespaced; see
``pipelines/method_run.py``)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.core.methods.registry import MethodInfo
from diffusion_transfer.pipelines.translate.nodes import (
    evaluate_translations,
    select_translation_inputs,
    translate,
    translation_grid,
)


def create_translation_inputs_pipeline(source: dict[str, str], prefix: str = "") -> Pipeline:
    """The source domain's translation inputs (``source``: its catalog entries)."""
    n = source
    return Pipeline([
        node(select_translation_inputs, [n["source_images"], n["source_model"], "params:translation"],
             n["translation_inputs"], name=f"{prefix}select_translation_inputs", tags=["translate"]),
    ])


def create_translate_pipeline(info: MethodInfo) -> Pipeline:
    """Translate the inputs with the fine-tuned model (a conditional model
    takes its sampling conditions), score and draw the translations."""
    translate_inputs = ["finetuned_model", "source_model", "domain_classifier", "translation_inputs",
                        "params:translation", "params:dataset", "params:schedule"]
    return Pipeline([
        node(translate, translate_inputs + (["sampling_conditions"] if info.conditional else []),
             "translations", name="translate", tags=["translate"]),
        node(evaluate_translations, ["translations", "reference", "evaluation_clip", "attribute_classifier",
                                     "params:evaluation", "params:dataset"],
             "translation_metrics", name="evaluate_translations", tags=["evaluate"]),
        node(translation_grid, ["translations", "params:translation"], "translation_grid", name="translation_grid",
             tags=["report"]),
    ])
