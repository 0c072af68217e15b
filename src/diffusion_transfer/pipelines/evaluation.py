"""What the generation metrics (``report.evaluate``) and the translation
metrics (``translate.evaluate_translations``) share: the feature extractor
for FID/KID, the fixed reference subset, and the attributes they score."""

from __future__ import annotations

import numpy as np

from diffusion_transfer.core.metrics import FeatureExtractor, clip_extractor, inception_extractor
from diffusion_transfer.project.schema import EvaluationParams
from diffusion_transfer.pipelines.utils import inference_setup

#: The FaceWorld attributes scored for retention and coverage (not background).
EVALUATED_ATTRIBUTES = ("expression", "eyewear", "gender", "age", "hair_colour", "hair_style", "skin_tone")
ATTRIBUTES_WEIGHTS = "FaceWorld attribute classifier (evaluation only, never a training signal)"


def feature_extractor(p: EvaluationParams, clip) -> FeatureExtractor:
    """Inception (``evaluation.fid_features: inception``) or the given CLIP's
    image encoder, labelled as not comparable to published FID/KID."""
    if p.fid_features == "inception":
        device, dtype = inference_setup(p.precision)
        return inception_extractor(p.inception_path, device=device, autocast_dtype=dtype)
    label = getattr(clip, "weights_label", getattr(clip, "name", "CLIP"))
    return clip_extractor(clip.encode_images, name=getattr(clip, "name", "clip"),
                          weights=f"{label} image encoder (substitute for Inception; not comparable to "
                                  f"published FID/KID)")


def reference_subset(images: np.ndarray, max_images: int | None) -> np.ndarray:
    """At most ``max_images`` (``evaluation.max_reference_images``) of the
    reference images: a fixed, seeded subset, the same for every run and both
    metric nodes, so its features are cached once."""
    n = len(images)
    if max_images is None or n <= max_images:
        return images
    keep = np.sort(np.random.default_rng(0).choice(n, max_images, replace=False))
    return images[keep]
