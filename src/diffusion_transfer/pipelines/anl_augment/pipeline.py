"""``anl_augment_<dataset>``: ANL's semi-supervised augmentation experiment
(Table 2) on the model ``anl_<dataset>`` wrote (the pre-run check says so
when it has not run yet); made for a dataset that declares ``augmentation``."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.pipelines.anl_augment.nodes import (
    augment_classify,
    augment_generate,
    augment_split,
    augmentation_table,
)


def create_anl_augment_pipeline(dataset: str, raw_entry: str, sampling: str, method: str = "anl") -> Pipeline:
    """In the namespace of ``<method>_<dataset>`` (its fine-tuned model, and its
    report beside the run's), with the dataset's image folder (for its labels
    file) and its curated and reference sets; ``sampling``: its source's sampling parameter."""
    template = Pipeline([
        node(augment_split, ["folder", "curated", "reference", "params:dataset"], "augment_data",
             name="augment_split", tags=["augment"]),
        node(augment_generate, ["finetuned_model", "augment_data", "condition_clip", "params:method", "params:dataset",
                                "params:sampling", "params:schedule"], ["augment_generated", "augment_sheet"],
             name="augment_generate", tags=["sample", "augment"]),
        node(augment_classify, ["augment_data", "augment_generated", "params:dataset"], "augmentation",
             name="augment_classify", tags=["augment"]),
        node(augmentation_table, "augmentation", "augmentation_report", name="augmentation_table", tags=["report"]),
    ])
    return Pipeline(
        template, namespace=f"{method}_{dataset}",
        inputs={"condition_clip": "condition_clip", "folder": raw_entry, "curated": f"{dataset}_curated",
                "reference": f"{dataset}_reference"},
        parameters={"params:method": f"params:methods.{method}", "params:dataset": f"params:datasets.{dataset}",
                    "params:sampling": sampling, "params:schedule": "params:schedule"})
