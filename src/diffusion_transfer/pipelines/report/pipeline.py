"""The report nodes of the method template (un-namespaced; see
``pipelines/method_run.py``)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.pipelines.report.nodes import build_report, build_text_to_image_report
from diffusion_transfer.pipelines.training_samples import training_samples_strip


def create_report_pipeline() -> Pipeline:
    """``report.md``, the sample grid and loss curve, and the strip of
    samples taken during training."""
    return Pipeline([
        node(training_samples_strip, ["training_history"], "training_samples", name="training_samples_strip",
             tags=["report"]),
        node(build_report,
             ["metrics", "training_history", "curation_summary", "source_samples", "target_samples",
              "translation_metrics"],
             ["report", "sample_grid", "loss_curve"], name="report", tags=["report"]),
    ])


def create_text_to_image_report_pipeline() -> Pipeline:
    """A text-to-image run's ``report.md``: its metrics, samples and training."""
    return Pipeline([
        node(build_text_to_image_report, ["metrics", "training_history", "curation_summary",
                                          "source_prompt_samples", "target_samples"],
             ["report", "sample_grid", "loss_curve"], name="report", tags=["report"]),
    ])
