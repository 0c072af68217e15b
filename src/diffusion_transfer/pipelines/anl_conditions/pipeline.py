"""``anl_conditions_<dataset>``: ANL's mask-rate sweep and seen / unseen
conditions on the model ``anl_<dataset>`` wrote (the pre-run check says so
when it has not run yet)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.pipelines.anl_conditions.nodes import condition_sweep, condition_sweep_table


def create_anl_conditions_pipeline(dataset: str, source: dict[str, str], sampling: str,
                                   method: str = "anl") -> Pipeline:
    """In the namespace of ``<method>_<dataset>`` (its fine-tuned model, and its
    outputs beside the run's), with the dataset's sets and the source's noise
    bank; ``sampling``: the source's sampling parameter."""
    template = Pipeline([
        node(condition_sweep, ["finetuned_model", "curated", "reference", "noise_bank", "condition_clip",
                               "evaluation_clip", "attribute_classifier", "params:method", "params:dataset",
                               "params:sampling", "params:schedule", "params:evaluation"],
             ["condition_sweep", "condition_sweep_grid"], name="condition_sweep", tags=["sample", "evaluate"]),
        node(condition_sweep_table, "condition_sweep", "condition_sweep_report", name="condition_sweep_table",
             tags=["report"]),
    ])
    shared = {"condition_clip", "evaluation_clip", "attribute_classifier"}
    return Pipeline(
        template, namespace=f"{method}_{dataset}",
        inputs={**{s: s for s in shared}, "noise_bank": source["noise_bank"], "curated": f"{dataset}_curated",
                "reference": f"{dataset}_reference"},
        parameters={"params:method": f"params:methods.{method}", "params:dataset": f"params:datasets.{dataset}",
                    "params:sampling": sampling, "params:schedule": "params:schedule",
                    "params:evaluation": "params:evaluation"})
