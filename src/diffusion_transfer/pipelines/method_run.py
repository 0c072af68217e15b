"""The method template: fine-tune -> sample -> translate -> evaluate -> report.

One template, composed from the stages' pipeline factories and instantiated
per method x dataset with a Kedro namespace (``sdft_aahq.finetuned_model``
...), resolved by the catalog's dataset factories. Shared inputs (the source
model, the curated set, the noise bank, the source model's samples) stay
outside the namespace.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from diffusion_transfer.core.methods import METHODS
from diffusion_transfer.pipelines.evaluate.pipeline import (
    create_evaluate_pipeline,
    create_text_to_image_evaluate_pipeline,
)
from diffusion_transfer.pipelines.finetune.pipeline import (
    create_finetune_pipeline,
    create_text_to_image_finetune_pipeline,
)
from diffusion_transfer.pipelines.report.pipeline import create_report_pipeline, create_text_to_image_report_pipeline
from diffusion_transfer.pipelines.sample.pipeline import (
    create_sample_pipeline,
    create_source_sampling_pipeline,
    create_text_to_image_sample_pipeline,
)
from diffusion_transfer.pipelines.translate.pipeline import (
    create_translate_pipeline,
    create_translation_inputs_pipeline,
)


def create_source_pipeline(source: dict[str, str], prefix: str, sampling: str) -> Pipeline:
    """One source model's samples from its own noise bank, and its translation
    inputs (one per source domain); ``source`` maps the roles
    (``source_model``, ``noise_bank``...) to the domain's catalog entries
    (``declared.SourceDomain.entries``); ``sampling`` is its sampling parameter."""
    return create_source_sampling_pipeline(source, prefix, sampling) + create_translation_inputs_pipeline(source, prefix)


def create_method_pipeline(method: str, dataset: str, source: dict[str, str], sampling: str) -> Pipeline:
    """``{method}_{dataset}``: the template in the run's namespace, wired to
    the dataset's curated sets and to its source domain's model, noise bank
    and samples (``source``: their catalog entries), sampled as its source is
    (``sampling``: the source's sampling parameter)."""
    info = METHODS[method]
    template = (create_finetune_pipeline(info) + create_sample_pipeline(info) + create_translate_pipeline(info)
                + create_evaluate_pipeline() + create_report_pipeline())
    shared = {"evaluation_clip", "attribute_classifier"} | ({"condition_clip"} if info.conditional else set())
    source = {k: v for k, v in source.items() if k != "source_images"}
    # The dataset's noisy domain classifier: TAN's guidance, EGSDE's realism energy.
    extra_inputs = {"domain_classifier": f"{dataset}_domain_classifier"}
    return Pipeline(
        template,
        namespace=f"{method}_{dataset}",
        inputs={**{s: s for s in shared}, **source, "curated": f"{dataset}_curated", "reference": f"{dataset}_reference",
                "curation_summary": f"{dataset}_curation_summary", **extra_inputs},
        parameters={**_run_parameters(method, dataset, sampling), "params:evaluation": "params:evaluation",
                    "params:translation": "params:translation"},
    )


def create_text_to_image_method_pipeline(method: str, dataset: str, source: dict[str, str],
                                         sampling: str) -> Pipeline:
    """``{method}_{dataset}`` for a text-to-image source (issue 34): captions ->
    fine-tune -> samples of both models -> metrics -> report (no translation)."""
    template = (create_text_to_image_finetune_pipeline(METHODS[method]) + create_text_to_image_sample_pipeline()
                + create_text_to_image_evaluate_pipeline() + create_text_to_image_report_pipeline())
    return Pipeline(
        template,
        namespace=f"{method}_{dataset}",
        inputs={"source_model": source["source_model"], "noise_bank": source["noise_bank"],
                "curated": f"{dataset}_curated", "reference": f"{dataset}_reference",
                "curation_summary": f"{dataset}_curation_summary",
                **{s: s for s in ("evaluation_clip", "attribute_classifier")}},
        parameters={**_run_parameters(method, dataset, sampling), "params:evaluation": "params:evaluation"},
    )


def _run_parameters(method: str, dataset: str, sampling: str) -> dict[str, str]:
    """The parameters every method run's template reads, mapped to the run's blocks."""
    return {
        "params:method": f"params:methods.{method}",
        "params:dataset": f"params:datasets.{dataset}",
        "params:train": "params:train",
        "params:schedule": "params:schedule",
        "params:sampling": sampling,
        "params:paths.checkpoints": "params:paths.checkpoints",
    }
