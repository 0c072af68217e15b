"""``classifier_<dataset>``: the noisy domain classifier's training node."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.pipelines.domain_classifier.nodes import train_domain_classifier
from diffusion_transfer.pipelines.utils import bind


def create_classifier_pipeline(dataset: str, source: dict[str, str]) -> Pipeline:
    """``classifier_<dataset>``: source images of the dataset's own source
    domain (``source``: its catalog entries) against its target images."""
    return Pipeline([node(
        bind(train_domain_classifier, dataset=dataset),
        inputs=[source["source_images"], f"{dataset}_curated", f"{dataset}_reference", source["source_model"],
                "params:classifier", "params:schedule", "params:paths.checkpoints"],
        outputs=[f"{dataset}_domain_classifier", f"{dataset}_classifier_report", f"{dataset}_classifier_accuracy"],
        name=f"classifier_{dataset}", tags=["train", "classifier"])])
