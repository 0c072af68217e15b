"""The evaluate nodes of the method template: the run's samples against the
target's reference set (FID/KID, intra-LPIPS, CLIP and attribute metrics),
and the Inception Score of each model's samples when it is on; a
text-to-image run's FID/KID, CLIP score and absent-concept retention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffusion_transfer.core.data.images import to_tensor
from diffusion_transfer.core.metrics import attributes as attr_metrics
from diffusion_transfer.core.metrics.fid import compute_fid_kid
from diffusion_transfer.core.metrics.inception_score import extract_logits, inception_score
from diffusion_transfer.core.metrics.intra_lpips import intra_lpips
from diffusion_transfer.core.metrics.lpips_metric import LPIPSMetric
from diffusion_transfer.core.metrics.text_to_image import clip_score, concept_rates, shows_concept
from diffusion_transfer.core.provenance import environment_record
from diffusion_transfer.core.world.classifier import predict_attributes
from diffusion_transfer.core.world.render import ATTRIBUTES
from diffusion_transfer.pipelines.evaluation import (
    ATTRIBUTES_WEIGHTS,
    EVALUATED_ATTRIBUTES,
    feature_extractor,
    fid_reference,
    inception_score_network,
    reference_subset,
)
from diffusion_transfer.pipelines.shortfall import KEY as SHORTFALLS, fewer_than_asked
from diffusion_transfer.project.schema import DatasetParams, EvaluationParams
from diffusion_transfer.pipelines.utils import inference_setup


def evaluate(source_samples: dict, target_samples: dict, curated: dict, reference: dict, clip, classifier,
             evaluation: EvaluationParams, dataset: DatasetParams) -> dict[str, Any]:
    """FID/KID of both models against the target data, LPIPS between source
    and target samples from the same noise, FaceWorld attribute retention and
    coverage, and the Inception Score where it is on. Every number states
    which weights it ran on."""
    # The IS network first: missing weights stop the node before any metric runs.
    is_network = inception_score_network(evaluation, dataset, classifier) if evaluation.scores_inception(dataset) \
        else None
    ref = fid_reference(dataset, curated, reference)
    trg = target_samples["images"].numpy()
    src = source_samples["images"].numpy()[: len(trg)]  # the source samples from the same noises
    n_ref = len(ref["images"])
    ref_images = reference_subset(ref["images"].numpy(), evaluation.max_reference_images)
    extractor = feature_extractor(evaluation, clip)
    cache = Path(evaluation.cache_dir)
    metrics: dict[str, Any] = {"dataset": dataset.name,
                               "fid_reference": f"{dataset.fid_reference} set ({len(ref_images)} of {n_ref} images)",
                               "n_samples": int(len(trg))}
    models: dict[str, dict[str, Any]] = {"source": {}, "finetuned": {}}
    for key, imgs in (("source", src), ("finetuned", trg)):
        fk = compute_fid_kid(imgs, ref_images, extractor, ref_cache=cache, batch_size=evaluation.batch_size)
        models[key].update(fid=fk["fid"], kid_x1e3=fk["kid_x1e3"])
    lpips = LPIPSMetric(net=evaluation.lpips_net, backbone_weights=evaluation.lpips_backbone_weights,
                        device=inference_setup()[0])
    n = min(evaluation.lpips_pairs, len(src))
    metrics[SHORTFALLS] = fewer_than_asked("evaluate", "evaluation.lpips_pairs", evaluation.lpips_pairs, n,
                                           "source/fine-tuned sample pairs for LPIPS src-trg",
                                           _samples_why(len(trg), dataset))
    models["finetuned"]["lpips_src_trg"] = lpips.mean_paired(to_tensor(src[:n]), to_tensor(trg[:n]),
                                                             batch_size=evaluation.batch_size)
    weights = {"fid_kid": extractor.weights, "lpips": lpips.label}
    if dataset.intra_lpips:
        # Few-shot diversity (CDC/TAN protocol): every sample joins its nearest
        # training image by LPIPS; mean pairwise LPIPS inside each cluster.
        shots = to_tensor(curated["images"].numpy())
        for key, imgs in (("source", src), ("finetuned", trg)):
            res = intra_lpips(to_tensor(imgs), shots, lpips, max_per_cluster=dataset.intra_lpips_max_per_cluster)
            models[key]["intra_lpips"] = res["intra_lpips"]
            models[key]["intra_lpips_detail"] = res
        weights["intra_lpips"] = lpips.label
    skipped = [] if dataset.intra_lpips else [f"intra-LPIPS: off (datasets.{dataset.name}.intra_lpips: false)"]
    if is_network is not None:
        for key, imgs in (("source", src), ("finetuned", trg)):
            score = inception_score(extract_logits(is_network, imgs, evaluation.batch_size),
                                    min(evaluation.inception_score_splits, len(imgs)))
            models[key].update(inception_score=score["mean"], inception_score_std=score["std"],
                               inception_score_splits=score["splits"])
        metrics[SHORTFALLS] += fewer_than_asked(
            "evaluate", "evaluation.inception_score_splits", evaluation.inception_score_splits,
            min(evaluation.inception_score_splits, len(trg)), "Inception Score splits", _samples_why(len(trg), dataset))
        metrics["inception_score_substitute"] = is_network.substitute
        weights["inception_score"] = is_network.weights
    if not (evaluation.attributes and dataset.attributes and classifier is not None):
        why = (f"datasets.{dataset.name}.attributes: false" if not dataset.attributes else
               "evaluation.attributes: false" if not evaluation.attributes else "no attribute classifier")
        skipped.append(f"FaceWorld attribute metrics (face rate, retention, coverage): off ({why})")
    else:
        metrics["training_set_attributes"] = _attribute_metrics(classifier, src, trg, curated, models, skipped)
        weights["attributes"] = ATTRIBUTES_WEIGHTS
    metrics["models"] = models
    metrics["weights"] = weights
    metrics["skipped"] = skipped
    metrics["environment"] = environment_record()  # commit, lock, versions, device (core/provenance.py)
    return metrics


def _samples_why(n: int, dataset: DatasetParams) -> str:
    return f"each model has {n} samples (datasets.{dataset.name}.n_samples, else sampling.n_samples)"


def _attribute_metrics(classifier, src: np.ndarray, trg: np.ndarray, curated: dict,
                       models: dict[str, dict[str, Any]], skipped: list[str]) -> dict[str, Any]:
    """Adds face rate, coverage and frequencies to ``models["source"]`` and
    ``models["finetuned"]``, and retention to the latter (what it cannot score
    goes to ``skipped``); returns the training set's attribute summary."""
    src_attrs = predict_attributes(classifier, src)
    trg_attrs = predict_attributes(classifier, trg)
    train_records = curated["meta"].get("records") or []
    if train_records:
        train_attrs, train_src = train_records, "ground-truth FaceWorld records of the curated set"
    else:
        train_attrs = predict_attributes(classifier, curated["images"].numpy())
        train_src = "attribute classifier predictions on the curated set"
    vocab = {k: ATTRIBUTES[k] for k in EVALUATED_ATTRIBUTES}
    for key, attrs in (("source", src_attrs), ("finetuned", trg_attrs)):
        models[key]["face_rate"] = attr_metrics.face_rate(attrs)
        models[key]["coverage"] = attr_metrics.attribute_coverage(attrs, train_attrs, attributes=EVALUATED_ATTRIBUTES,
                                                                  vocabulary=vocab)
        models[key]["frequencies"] = attr_metrics.attribute_frequencies(attrs)
    try:
        models["finetuned"]["retention"] = attr_metrics.attribute_retention(src_attrs, trg_attrs,
                                                                            attributes=EVALUATED_ATTRIBUTES)
    except ValueError as err:  # e.g. no source sample is a face: nothing to retain
        skipped.append(f"attribute retention: {err}")
    # What SDFT is for: of the source samples showing a value the training
    # set lacks (glasses, a smile...), how many keep it after fine-tuning.
    absent = {k: v for k, v in models["source"]["coverage"]["absent_values"].items() if v}
    if absent:
        try:
            models["finetuned"]["retention_of_absent"] = attr_metrics.attribute_retention(
                src_attrs, trg_attrs, attributes=list(absent), only_values=absent)
        except ValueError:  # no source sample shows an absent value
            pass
    return {"source": train_src, "frequencies": attr_metrics.attribute_frequencies(train_attrs),
            "absent_values": absent}


def evaluate_text_to_image(source_samples: dict, target_samples: dict, source_absent: dict, finetuned_absent: dict,
                           curated: dict, reference: dict, clip, classifier, evaluation: EvaluationParams,
                           dataset: DatasetParams) -> dict[str, Any]:
    """FID/KID and the CLIP score of both models' samples, and the retention
    of the absent concepts; every number states which weights it ran on, and
    the FaceWorld models on another dataset's images are labelled substitutes."""
    ref = fid_reference(dataset, curated, reference)
    ref_images = reference_subset(ref["images"].numpy(), evaluation.max_reference_images)
    extractor = feature_extractor(evaluation, clip)
    metrics: dict[str, Any] = {
        "dataset": dataset.name, "kind": "text_to_image", "n_samples": int(len(target_samples["images"])),
        "fid_reference": f"{dataset.fid_reference} set ({len(ref_images)} of {len(ref['images'])} images)"}
    models: dict[str, dict[str, Any]] = {"source": {}, "finetuned": {}}
    for key, samples in (("source", source_samples), ("finetuned", target_samples)):
        imgs = samples["images"].numpy()
        fk = compute_fid_kid(imgs, ref_images, extractor, ref_cache=Path(evaluation.cache_dir),
                             batch_size=evaluation.batch_size)
        score = clip_score(clip.encode_images, clip.encode_text, imgs, samples["meta"]["prompts"],
                           evaluation.batch_size)
        models[key].update(fid=fk["fid"], kid_x1e3=fk["kid_x1e3"], clip_score=score["clip_score"],
                           clip_score_per_prompt=score["per_prompt"])
    clip_sub, attr_sub = _is_world_clip(clip) and not dataset.attributes, not dataset.attributes
    metrics.update(clip_score_substitute=clip_sub, attributes_substitute=attr_sub)
    weights = {"fid_kid": extractor.weights, "clip_score": clip.weights_label + (_outside(dataset) if clip_sub else "")}
    t2i, skipped = evaluation.text_to_image, []
    k = int(source_absent["meta"].get("n_per_prompt", 0))
    metrics[SHORTFALLS] = fewer_than_asked(
        "evaluate", "evaluation.text_to_image.n_per_prompt", t2i.n_per_prompt if t2i.absent_prompts else None, k,
        "samples per absent prompt", f"the noise bank has {k} noises (sampling.n_samples)")
    if not t2i.absent_prompts:
        skipped.append("absent-concept retention: off (evaluation.text_to_image.absent_prompts is empty)")
    else:
        metrics["absent_concepts"] = _absent_concepts(clip, classifier, source_absent, finetuned_absent, curated,
                                                      evaluation, models, skipped)
        if classifier is not None and evaluation.attributes:
            weights["attributes"] = ATTRIBUTES_WEIGHTS + (_outside(dataset) if attr_sub else "")
    metrics.update(models=models, weights=weights, skipped=skipped, environment=environment_record())
    return metrics


def _is_world_clip(clip) -> bool:
    # deferred: core.world.clip imports open_clip (~1 s), which registering the pipelines does not need
    from diffusion_transfer.core.world.clip import MODEL_NAME

    return getattr(clip, "name", None) == MODEL_NAME


def _outside(dataset: DatasetParams) -> str:
    return (f" (substitute: a FaceWorld model on images outside FaceWorld, datasets.{dataset.name}.attributes: "
            "false; its numbers say little about them)")


def _absent_concepts(clip, classifier, source_absent: dict, finetuned_absent: dict, curated: dict,
                     evaluation: EvaluationParams, models: dict[str, dict[str, Any]],
                     skipped: list[str]) -> dict[str, Any]:
    """Per absent prompt: the CLIP score of both models' samples and, with the
    attribute classifier, the rates showing the concept and ``kept``; adds
    the pixel runs' keys to ``models`` (``absent_concept_rate``,
    ``retention_of_absent_concepts``) and returns the details."""
    concepts, k = evaluation.text_to_image.absent_prompts, int(source_absent["meta"]["n_per_prompt"])
    rows: dict[str, dict[str, Any]] = {c.prompt: {"shows": c.shows} for c in concepts}
    for key, samples in (("source", source_absent), ("finetuned", finetuned_absent)):
        score = clip_score(clip.encode_images, clip.encode_text, samples["images"].numpy(),
                           samples["meta"]["prompts"], evaluation.batch_size)
        for prompt, value in score["per_prompt"].items():
            rows[prompt][f"{key}_clip_score"] = value
    out: dict[str, Any] = {"n_per_prompt": k, "concepts": rows}
    if classifier is None or not evaluation.attributes:
        why = "evaluation.attributes: false" if not evaluation.attributes else "no attribute classifier"
        skipped.append(f"absent-concept retention (attribute classifier): off ({why})")
        return out
    src = predict_attributes(classifier, source_absent["images"].numpy())
    trg = predict_attributes(classifier, finetuned_absent["images"].numpy())
    train = curated["meta"].get("records") or predict_attributes(classifier, curated["images"].numpy())
    out["training_set"] = ("ground-truth FaceWorld records of the curated set" if curated["meta"].get("records")
                           else "attribute classifier predictions on the curated set")
    for j, c in enumerate(concepts):
        rows[c.prompt].update(concept_rates(src[j * k:(j + 1) * k], trg[j * k:(j + 1) * k], c.shows),
                              training_set_rate=sum(shows_concept(a, c.shows) for a in train) / len(train))
    for key, attrs in (("source", src), ("finetuned", trg)):
        models[key]["absent_face_rate"] = attr_metrics.face_rate(attrs)
        models[key]["absent_concept_rate"] = {p: r[f"{key}_rate"] for p, r in rows.items()}
    kept = {p: r["kept"] for p, r in rows.items() if r["kept"] is not None}
    models["finetuned"]["retention_of_absent_concepts"] = {**kept, **({"mean": sum(kept.values()) / len(kept)}
                                                                      if kept else {})}
    if not kept:  # e.g. no source sample reads as a face showing a concept: nothing to keep
        skipped.append("absent-concept kept: no source sample shows a prompted concept")
    return out
