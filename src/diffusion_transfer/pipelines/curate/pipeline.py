"""``curate_<dataset>``: one curation node per declared dataset (similarity
filter, zero-shot removal, whole folder or few-shot split)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.pipelines.curate.nodes import curate, curate_few_shot


def create_curate_pipeline(dataset: str, raw: str, source_model: str, few_shot: bool = False) -> Pipeline:
    """``raw`` (the dataset's image folder entry) -> ``<dataset>_curated``,
    ``_reference``, ``_curation_summary`` and ``_curation_sheet``."""
    outputs = [f"{dataset}_curated", f"{dataset}_reference", f"{dataset}_curation_summary",
               f"{dataset}_curation_sheet"]
    if few_shot:
        inputs = [raw, source_model, f"params:datasets.{dataset}"]
        return Pipeline([node(curate_few_shot, inputs, outputs, name=f"curate_{dataset}", tags=["curate"])])
    inputs = [raw, "curation_clip", source_model, f"params:datasets.{dataset}", "params:paths.features"]
    return Pipeline([node(curate, inputs, outputs, name=f"curate_{dataset}", tags=["curate"])])
