"""The Inception Score (Salimans et al. 2016), as torch-fidelity computes it.

IS = exp(E_x KL(p(y|x) || p(y))), averaged over ``splits`` chunks of the
shuffled samples (torch-fidelity's defaults: 10 splits, shuffle with seed
2020). The score itself is torch-fidelity's own function
(``torch_fidelity.metric_isc.isc_features_to_metric``), never a copy.

The logits come from a :class:`LogitsExtractor`, labelled like FID's
feature extractors:

- :func:`torch_fidelity_inception`: torch-fidelity's ``inception-v3-compat``
  (the TF Inception of 2015-12-05, 1,008 classes, ``logits_unbiased``), the
  network published IS values use. Its weights file
  (``weights-inception-2015-12-05-6726825d.pth``) must be given locally.
- :func:`joint_attribute_logits`: a substitute for FaceWorld, where no
  Inception weights exist: a classifier's per-attribute heads as one
  categorical over their joint values. Numbers from it are labelled as a
  substitute and are not comparable to published IS.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.defaults import DEFAULTS as FIDELITY_DEFAULTS
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

#: torch-fidelity's file name for its Inception weights (its release v0.2.0)
FIDELITY_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


@dataclass(frozen=True)
class LogitsExtractor:
    """A named function from uint8 images (B, 3, H, W) to class logits (B, C).
    ``weights`` says in words which weights it runs on; ``substitute`` is true
    when it is not the Inception network of published IS values."""

    name: str
    weights: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    substitute: bool = False


def inception_score(logits: torch.Tensor | np.ndarray, splits: int = FIDELITY_DEFAULTS["isc_splits"]) -> dict:
    """``{"mean", "std", "splits", "n"}`` of the IS of ``logits`` (N, C), by
    torch-fidelity's ``isc_features_to_metric`` with its shuffle and seed."""
    logits = torch.as_tensor(logits)
    if logits.dim() != 2 or logits.shape[0] < 1:
        raise ValueError(f"logits must be (N, C) with N >= 1, got shape {tuple(logits.shape)}")
    if not 1 <= splits <= logits.shape[0]:
        raise ValueError(f"splits ({splits}) must be between 1 and the number of samples ({logits.shape[0]}); "
                         "lower evaluation.inception_score_splits or sample more")
    out = isc_features_to_metric(logits, splits=splits, shuffle=FIDELITY_DEFAULTS["samples_shuffle"],
                                 rng_seed=FIDELITY_DEFAULTS["rng_seed"])
    return {"mean": out[KEY_METRIC_ISC_MEAN], "std": out[KEY_METRIC_ISC_STD], "splits": splits,
            "n": int(logits.shape[0])}


def extract_logits(extractor: LogitsExtractor, images_uint8: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Logits (N, C) float64 of uint8 images (N, H, W, 3), batch by batch."""
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images_uint8.dtype} {images_uint8.shape}")
    chunks = []
    for i in range(0, len(images_uint8), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images_uint8[i:i + batch_size])).permute(0, 3, 1, 2)
        with torch.no_grad():
            chunks.append(extractor.fn(batch).double().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, 0, dtype=torch.float64)


def torch_fidelity_inception(weights: str | Path, device: str | torch.device = "cpu") -> LogitsExtractor:
    """torch-fidelity's ``inception-v3-compat`` giving ``logits_unbiased`` (its
    IS feature), from the local file ``weights``; raises FileNotFoundError
    naming it (torch-fidelity would otherwise download it)."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: put torch-fidelity's {FIDELITY_INCEPTION_FILE} there "
                                "(github.com/toshas/torch-fidelity, release v0.2.0)")
    device = torch.device(device)
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"],
                                      feature_extractor_weights_path=str(path)).to(device)

    def fn(batch: torch.Tensor) -> torch.Tensor:
        (logits,) = net(batch.to(device))
        return logits

    return LogitsExtractor("inception-v3-compat", f"Inception-v3 2015-12-05 (torch-fidelity inception-v3-compat, "
                           f"{path.name}; logits_unbiased, 1,008 classes)", fn)


def joint_logits(head_logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One categorical over the joint values of independent heads: the log-
    probability of each combination (a1, ..., ak) is the sum of the heads'
    log-softmaxes, so the result has prod(n_i) columns (heads in the order given)."""
    logp = [torch.log_softmax(t.double(), dim=-1) for t in head_logits.values()]
    if not logp:
        raise ValueError("no heads to combine")
    joint = logp[0]
    for lp in logp[1:]:
        joint = (joint[:, :, None] + lp[:, None, :]).reshape(joint.shape[0], -1)
    return joint


def joint_attribute_logits(heads_fn: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
                           attributes: Mapping[str, tuple[str, ...]], label: str) -> LogitsExtractor:
    """A substitute IS network: ``heads_fn`` maps float images in [-1, 1] to
    per-attribute logits; the IS classes are the joint values of ``attributes``."""
    n_classes = int(np.prod([len(v) for v in attributes.values()]))
    names = list(attributes)

    def fn(batch: torch.Tensor) -> torch.Tensor:
        x = batch.float() / 127.5 - 1.0
        out = heads_fn(x)
        return joint_logits({k: out[k] for k in names})

    weights = (f"{label}: the joint values of its heads {', '.join(names)} as {n_classes:,} classes "
               "(substitute for Inception; not comparable to published IS)")
    return LogitsExtractor("is-substitute", weights, fn, substitute=True)


def joint_class_names(attributes: Mapping[str, tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The class of each column of :func:`joint_logits` (for reading a substitute's predictions)."""
    return list(itertools.product(*attributes.values()))
