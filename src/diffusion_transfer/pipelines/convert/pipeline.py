"""``convert_source``: an ADM checkpoint -> the diffusers source model."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.pipelines.convert.nodes import convert_source


def create_pipeline() -> Pipeline:
    return Pipeline([node(convert_source, "params:convert_source", "converted_source_model", name="convert_source",
                          tags=["convert"])])
