"""What the generation metrics (``report.evaluate``) and the translation
metrics (``translate.evaluate_translations``) share: the feature extractor
for FID/KID, the fixed reference subset, and the attributes they score; and
the network of the Inception Score."""

from __future__ import annotations

import numpy as np
import torch

from diffusion_transfer.core.metrics import FeatureExtractor, clip_extractor, inception_extractor
from diffusion_transfer.core.metrics.inception_score import (
    LogitsExtractor,
    joint_attribute_logits,
    torch_fidelity_inception,
)
from diffusion_transfer.core.world.common import resize_images
from diffusion_transfer.core.world.render import ATTRIBUTES
from diffusion_transfer.project.schema import DatasetParams, EvaluationParams, InvalidParametersError
from diffusion_transfer.pipelines.utils import inference_setup

#: The FaceWorld attributes scored for retention and coverage (not background).
EVALUATED_ATTRIBUTES = ("expression", "eyewear", "gender", "age", "hair_colour", "hair_style", "skin_tone")
ATTRIBUTES_WEIGHTS = "FaceWorld attribute classifier (evaluation only, never a training signal)"


def feature_extractor(p: EvaluationParams, clip) -> FeatureExtractor:
    """Inception (``evaluation.fid_features: inception``) or the given CLIP's
    image encoder, labelled as not comparable to published FID/KID."""
    if p.fid_features == "inception":
        device, dtype = inference_setup(p.precision, "evaluation.precision")
        return inception_extractor(p.inception_path, device=device, autocast_dtype=dtype, compile=p.compile)
    label = getattr(clip, "weights_label", getattr(clip, "name", "CLIP"))
    encode = torch.compile(clip.encode_images) if p.compile else clip.encode_images  # evaluation.compile
    return clip_extractor(encode, name=getattr(clip, "name", "clip"),
                          weights=f"{label} image encoder (substitute for Inception; not comparable to "
                                  f"published FID/KID)")


def fid_reference(dataset: DatasetParams, curated: dict, reference: dict) -> dict:
    """What FID/KID compare against (``datasets.<d>.fid_reference``); ``full``
    is the whole folder: a few-shot split's shots and held-out rest together."""
    if dataset.fid_reference == "curated":
        return curated
    if dataset.fid_reference == "full" and dataset.kind == "few_shot":
        return {"images": torch.cat([curated["images"], reference["images"]]),
                "meta": {"names": curated["meta"]["names"] + reference["meta"]["names"]}}
    return reference  # raw, or full on a whole-folder dataset: every usable image


def reference_subset(images: np.ndarray, max_images: int | None) -> np.ndarray:
    """At most ``max_images`` (``evaluation.max_reference_images``) of the
    reference images: a fixed, seeded subset, the same for every run and both
    metric nodes, so its features are cached once."""
    n = len(images)
    if max_images is None or n <= max_images:
        return images
    keep = np.sort(np.random.default_rng(0).choice(n, max_images, replace=False))
    return images[keep]


def inception_score_network(p: EvaluationParams, dataset: DatasetParams, classifier) -> LogitsExtractor:
    """torch-fidelity's Inception from ``evaluation.inception_score_weights``;
    without weights, on a FaceWorld dataset, the attribute classifier's joint
    heads, labelled as a substitute. Errors name the parameter."""
    p.check_inception_score(dataset)
    if p.inception_score_weights is not None:
        try:
            return torch_fidelity_inception(p.inception_score_weights, device=inference_setup()[0])
        except FileNotFoundError as err:
            raise InvalidParametersError(f"Invalid parameters in 'evaluation.inception_score_weights': {err}; or "
                                         f"switch IS off ('datasets.{dataset.name}.inception_score: false')") from None
    if classifier is None:
        raise InvalidParametersError(
            "Invalid parameters in 'evaluation.inception_score_weights': null, and the attribute classifier (the "
            "FaceWorld substitute) is not loaded; set it to torch-fidelity's weights-inception-2015-12-05-6726825d.pth")
    heads = {k: ATTRIBUTES[k] for k in EVALUATED_ATTRIBUTES}
    return joint_attribute_logits(lambda x: classifier(_at(x, classifier)), heads, ATTRIBUTES_WEIGHTS)


def _at(x, classifier):
    """Images resized to the classifier's input size, on its device, in eval mode."""
    classifier.eval()
    dev = next(classifier.parameters()).device
    return resize_images(x.to(dev).clamp(-1.0, 1.0), classifier.image_size)
