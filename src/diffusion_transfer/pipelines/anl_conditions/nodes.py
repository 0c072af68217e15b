"""``anl_conditions_<dataset>``: ANL's own sampling experiments on its
fine-tuned model (Transferring Pretrained DPMs, appendix A and Figs. 3, 7-16).

The model ``anl_<dataset>`` wrote is sampled from the shared noise bank with
CLIP conditions of *seen* condition images (the training set, as the method
run samples) and of *unseen* ones (images of the dataset the model was not
trained on), each at every mask rate of ``methods.anl.condition.mask_rates``
(Table 3: FID and IS against the mask rate). Every row is scored like the
method run's samples: FID/KID against ``datasets.<d>.fid_reference`` and, where
it is on, the Inception Score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffusion_transfer.core.data.contact_sheet import labelled_rows
from diffusion_transfer.core.data.images import to_tensor, to_uint8
from diffusion_transfer.core.methods.anl import image_conditions, masked_images
from diffusion_transfer.core.metrics.fid import compute_fid_kid
from diffusion_transfer.core.metrics.inception_score import extract_logits, inception_score
from diffusion_transfer.pipelines.evaluation import (
    feature_extractor,
    fid_reference,
    inception_score_network,
    reference_subset,
)
from diffusion_transfer.pipelines.generation import generate
from diffusion_transfer.pipelines.schedule import model_schedule
from diffusion_transfer.pipelines.tables import fmt
from diffusion_transfer.project.schema import (
    DatasetParams,
    EvaluationParams,
    MethodParams,
    SamplingParams,
    ScheduleParams,
)


def condition_pools(curated: dict, reference: dict) -> dict[str, np.ndarray]:
    """Seen condition images (the training set) and unseen ones (the
    dataset's images outside it; none for a dataset trained on all of it)."""
    seen = set(curated["meta"].get("names", []))
    names = reference["meta"].get("names", [])
    keep = [i for i, n in enumerate(names) if n not in seen] if names else []
    return {"seen": curated["images"].numpy(), "unseen": reference["images"].numpy()[keep]}


def condition_sweep(model, curated: dict, reference: dict, noise_bank: dict, condition_clip, evaluation_clip,
                    attribute_classifier, method: MethodParams, dataset: DatasetParams, sampling: SamplingParams,
                    schedule: ScheduleParams, evaluation: EvaluationParams) -> tuple[dict[str, Any], Image.Image]:
    """One row per (seen | unseen, mask rate): its FID/KID and IS; and a grid
    of each row's first samples."""
    is_network = (inception_score_network(evaluation, dataset, attribute_classifier)
                  if evaluation.scores_inception(dataset) else None)  # missing weights stop it before sampling
    sched = model_schedule(model, schedule)
    noise = noise_bank["noise"][: dataset.n_samples or len(noise_bank["noise"])]
    ref = fid_reference(dataset, curated, reference)
    ref_images = reference_subset(ref["images"].numpy(), evaluation.max_reference_images)
    extractor = feature_extractor(evaluation, evaluation_clip)
    rows, grid, skipped = [], [], []
    for which, pool in condition_pools(curated, reference).items():
        if not len(pool):
            skipped.append(f"{which} conditions: the dataset has no images outside its training set")
            continue
        picked = to_tensor(pool[np.arange(len(noise)) % len(pool)])
        for rate in method.condition.mask_rates:
            masked = masked_images(picked, rate, torch.Generator().manual_seed(sampling.seed + 2))
            images = to_uint8(generate(model, noise, sampling, sched, image_conditions(condition_clip, masked)))
            row = {"conditions": which, "mask_rate": rate, "n": int(len(images)),
                   **compute_fid_kid(images, ref_images, extractor, ref_cache=Path(evaluation.cache_dir),
                                     batch_size=evaluation.batch_size)}
            if is_network is not None:
                score = inception_score(extract_logits(is_network, images, evaluation.batch_size),
                                        min(evaluation.inception_score_splits, len(images)))
                row.update(inception_score=score["mean"], inception_score_std=score["std"])
            rows.append(row)
            grid.append((f"{which}, mask {rate:g}", images[:8]))
    weights = {"fid_kid": extractor.weights, "condition_clip": getattr(condition_clip, "weights_label", "CLIP")}
    if is_network is not None:
        weights["inception_score"] = is_network.weights
    result = {"dataset": dataset.name, "fid_reference": f"{dataset.fid_reference} set ({len(ref_images)} images)",
              "sampler": f"{sampling.sampler}, {sampling.steps} steps", "rows": rows, "weights": weights,
              "skipped": skipped}
    return result, labelled_rows(grid)


def condition_sweep_table(result: dict[str, Any]) -> str:
    """The Table 3 analogue as markdown: a row per condition set and mask rate."""
    has_is = any("inception_score" in r for r in result["rows"])
    lines = [f"# ANL conditions: {result['dataset']}", "",
             f"Samples of the fine-tuned ANL model ({result['sampler']}), conditioned on seen (training) or unseen "
             f"images with a rectangle of side mask rate masked (ANL 3.3, app. A). FID/KID against the "
             f"{result['fid_reference']}.", "",
             "| conditions | mask rate | n | FID ↓ | KID x1e3 ↓ |" + (" IS ↑ |" if has_is else ""),
             "|---|---|---|---|---|" + ("---|" if has_is else "")]
    for r in result["rows"]:
        cell = f" {fmt(r.get('inception_score'), 2)} ± {fmt(r.get('inception_score_std'), 2)} |" if has_is else ""
        lines.append(f"| {r['conditions']} | {r['mask_rate']:g} | {r['n']} | {fmt(r['fid'], 2)} | "
                     f"{fmt(r['kid_x1e3'], 2)} |{cell}")
    lines += ["", *[f"- skipped: {s}" for s in result["skipped"]],
              *[f"- **{k}**: {v}" for k, v in result["weights"].items()], ""]
    return "\n".join(lines)
