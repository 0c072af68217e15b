"""``compare_<dataset>``: the node that reads every run's metrics and writes the comparison."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.pipelines.compare.nodes import (
    EDIT_PREFIX,
    HISTORY_PREFIX,
    TRANSLATION_PREFIX,
    compare_runs,
)
from diffusion_transfer.pipelines.tables import SOURCE_RUN
from diffusion_transfer.pipelines.utils import bind


def create_compare_node_pipeline(dataset: str, methods: tuple[str, ...]) -> Pipeline:
    return Pipeline(
        [
            node(
                bind(compare_runs, dataset=dataset),
                inputs={**{m: f"{m}_{dataset}.metrics" for m in methods},
                        **{f"{HISTORY_PREFIX}{m}": f"{m}_{dataset}.training_history" for m in methods},
                        **{f"{TRANSLATION_PREFIX}{m}": f"{m}_{dataset}.translation_metrics" for m in methods},
                        **{f"{EDIT_PREFIX}{m}": f"{m}_{dataset}.edit_metrics" for m in (SOURCE_RUN, *methods)}},
                outputs=[f"{dataset}_comparison", f"{dataset}_comparison_report"],
                name=f"compare_{dataset}",
                tags=["report"],
            )
        ]
    )
