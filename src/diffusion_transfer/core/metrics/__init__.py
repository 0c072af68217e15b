"""Evaluation metrics: FID/KID (clean-fid distances over a labelled feature
extractor), LPIPS (labelled when its backbone is untrained), PSNR/SSIM and
FaceWorld attribute retention / coverage."""

from diffusion_transfer.core.metrics.attributes import (
    attribute_coverage,
    attribute_frequencies,
    attribute_retention,
    face_rate,
)
from diffusion_transfer.core.metrics.fid import (
    FeatureExtractor,
    InceptionWeightsNotFound,
    clip_extractor,
    compute_fid_kid,
    extract_features,
    fid_from_features,
    inception_extractor,
    kid_from_features,
    resolve_inception_path,
)
from diffusion_transfer.core.metrics.image_metrics import psnr, ssim
from diffusion_transfer.core.metrics.lpips_metric import LPIPSMetric

__all__ = [
    "FeatureExtractor",
    "InceptionWeightsNotFound",
    "LPIPSMetric",
    "attribute_coverage",
    "attribute_frequencies",
    "attribute_retention",
    "clip_extractor",
    "compute_fid_kid",
    "extract_features",
    "face_rate",
    "fid_from_features",
    "inception_extractor",
    "kid_from_features",
    "psnr",
    "resolve_inception_path",
    "ssim",
]
