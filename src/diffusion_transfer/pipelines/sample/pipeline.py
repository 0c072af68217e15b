"""Sampling nodes: the source domain's noise bank and samples, and the
method template's samples of the fine-tuned model (un-namespaced; see
``pipelines/method_run.py``)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from diffusion_transfer.core.methods.registry import MethodInfo
from diffusion_transfer.pipelines.sample.nodes import (
    create_noise_bank,
    sample,
    sample_absent_concepts,
    sample_prompts,
    sample_target,
    sample_text_to_image_model,
    sampling_conditions,
)


def create_source_sampling_pipeline(source: dict[str, str], prefix: str, sampling: str) -> Pipeline:
    """One source domain's noise bank and its source model's samples from it
    (``source``: the domain's catalog entries; ``sampling``: its sampling parameter)."""
    n = source
    return Pipeline([
        node(create_noise_bank, [sampling, n["source_model"]], n["noise_bank"],
             name=f"{prefix}make_noise_bank", tags=["sample"]),
        node(sample, [n["source_model"], n["noise_bank"], sampling, "params:schedule"],
             n["source_samples"], name=f"{prefix}sample_source", tags=["sample"]),
    ])


def create_sample_pipeline(info: MethodInfo) -> Pipeline:
    """The fine-tuned model's samples; a conditional model (ANL) samples on
    masked training images' conditions, and on text prompts."""
    target_inputs = ["finetuned_model", "noise_bank", "params:sampling", "params:schedule", "params:dataset"]
    if not info.conditional:
        return Pipeline([node(sample_target, target_inputs, "target_samples", name="sample_finetuned",
                              tags=["sample"])])
    return Pipeline([
        node(sampling_conditions, ["curated", "noise_bank", "condition_clip", "params:method", "params:sampling"],
             "sampling_conditions", name="make_sampling_conditions", tags=["sample"]),
        node(sample_target, target_inputs + ["sampling_conditions"], "target_samples", name="sample_finetuned",
             tags=["sample"]),
        node(sample_prompts, ["finetuned_model", "noise_bank", "condition_clip", "params:method", "params:sampling",
                              "params:schedule"], "prompt_grid", name="sample_prompts", tags=["sample"]),
    ])


def create_text_to_image_sample_pipeline() -> Pipeline:
    """A text-to-image run's samples: the source and the fine-tuned model on the
    same noise and prompts (``sampling.prompts`` or the training captions), and
    on the same seeds for the concepts the training set lacks
    (``evaluation.text_to_image.absent_prompts``, issue 34)."""
    inputs = ["noise_bank", "params:sampling", "training_conditions"]
    absent = ["noise_bank", "params:sampling", "params:evaluation"]
    return Pipeline([
        node(sample_text_to_image_model, ["source_model", *inputs], "source_prompt_samples",
             name="sample_source_prompts", tags=["sample"]),
        node(sample_text_to_image_model, ["finetuned_model", *inputs], "target_samples", name="sample_finetuned",
             tags=["sample"]),
        node(sample_absent_concepts, ["source_model", *absent], "source_absent_samples",
             name="sample_source_absent_concepts", tags=["sample"]),
        node(sample_absent_concepts, ["finetuned_model", *absent], "finetuned_absent_samples",
             name="sample_finetuned_absent_concepts", tags=["sample"]),
    ])
