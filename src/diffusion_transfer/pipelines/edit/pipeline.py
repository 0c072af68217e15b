"""``edit_<method>_<dataset>``: the edit stage in a method run's namespace
(see ``nodes.py`` for why it is a pipeline of its own)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.core.methods import METHODS
from diffusion_transfer.pipelines.edit.nodes import (
    apply_edits,
    edit_grids,
    evaluate_edits,
    select_edit_inputs,
    train_edit_directions,
)
from diffusion_transfer.pipelines.tables import SOURCE_RUN


def create_edit_pipeline(method: str, dataset: str, source: dict[str, str]) -> Pipeline:
    """``edit_<method>_<dataset>``: the edit stage in the method run's
    namespace (``<method>_<dataset>.edits`` ...), wired to the run's
    fine-tuned model, the dataset's reference set and the shared CLIP and
    attribute classifier. ``method="source"`` edits the source model
    (``source["source_model"]``) on the same inputs, in the namespace
    ``source_<dataset>``."""
    if method != SOURCE_RUN and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)} or {SOURCE_RUN!r}")
    conditional = method != SOURCE_RUN and METHODS[method].conditional
    extra = ["condition_clip"] if conditional else []
    settings = ["params:editing", "params:schedule", "params:dataset"]
    template = Pipeline([
        node(train_edit_directions, ["finetuned_model", "edit_inputs", "evaluation_clip", *settings] + extra,
             "edit_directions", name="train_edit_directions", tags=["edit"]),
        node(apply_edits, ["finetuned_model", "edit_directions", "edit_inputs", *settings] + extra,
             "edits", name="apply_edits", tags=["edit"]),
        node(evaluate_edits, ["edits", "evaluation_clip", "attribute_classifier", "params:evaluation",
                              "params:editing", "params:dataset"], "edit_metrics", name="evaluate_edits",
             tags=["edit", "evaluate"]),
        node(edit_grids, ["edits", "params:editing", "params:dataset"], "edit_grids", name="edit_grids",
             tags=["edit", "report"]),
    ])
    shared = {"evaluation_clip", "attribute_classifier"} | ({"condition_clip"} if conditional else set())
    model = {"finetuned_model": source["source_model"]} if method == SOURCE_RUN else {}
    return create_edit_inputs_pipeline(dataset) + Pipeline(
        template,
        namespace=f"{method}_{dataset}",
        inputs={**{s: s for s in shared}, **model, "edit_inputs": f"{dataset}_edit_inputs"},
        parameters={"params:editing": "params:editing", "params:schedule": "params:schedule",
                    "params:evaluation": "params:evaluation", "params:dataset": f"params:datasets.{dataset}"},
    )


def create_edit_inputs_pipeline(dataset: str) -> Pipeline:
    return Pipeline([node(select_edit_inputs, [f"{dataset}_reference", "params:editing", f"params:datasets.{dataset}"],
                          f"{dataset}_edit_inputs", name=f"{dataset}_select_edit_inputs", tags=["edit"])])
