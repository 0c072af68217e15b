"""Metrics only a text-to-image model has (issue 34).

- **CLIP score** (prompt fidelity), as torchmetrics' ``CLIPScore`` defines
  it: ``max(100 * mean_i cos(E_I(x_i), E_T(p_i)), 0)`` over the samples x_i
  and the prompts p_i they were drawn for, with the evaluation CLIP's
  L2-normalised image and text embeddings (``core/data/embeddings.py``, the
  curation's CLIP code). Per prompt, the same over that prompt's samples.
- **Absent-concept retention**: a concept is a set of attribute values
  (``{"eyewear": ["glasses"], "gender": ["woman"]}``); a sample shows it when
  the attribute classifier reads a face with every attribute among its
  values. Rates are shares of all samples (a non-face never shows it);
  ``kept`` is, of the source samples showing it, the share whose fine-tuned
  sample from the same seed and prompt shows it too: the pixel runs'
  ``retention_of_absent`` (``attributes.attribute_retention``) for a concept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from diffusion_transfer.core.data.embeddings import EncodeImages, EncodeText, image_embeddings, text_embeddings

__all__ = ["clip_score", "concept_rates", "shows_concept"]


def clip_score(encode_images: EncodeImages, encode_text: EncodeText, images_uint8: np.ndarray,
               prompts: Sequence[str], batch_size: int = 256) -> dict[str, Any]:
    """The CLIP score of ``images_uint8`` (N, H, W, 3) for their ``prompts``
    (one each): ``{"clip_score", "per_prompt": {prompt: score}, "n"}``."""
    prompts = list(prompts)
    if len(prompts) != len(images_uint8):
        raise ValueError(f"one prompt per image: {len(images_uint8)} images, {len(prompts)} prompts")
    unique = list(dict.fromkeys(prompts))
    index = np.array([unique.index(p) for p in prompts])
    text = text_embeddings(encode_text, unique)
    cos = (image_embeddings(encode_images, images_uint8, batch_size=batch_size) * text[index]).sum(axis=-1)
    per_prompt = {p: max(100.0 * float(cos[index == j].mean()), 0.0) for j, p in enumerate(unique)}
    return {"clip_score": max(100.0 * float(cos.mean()), 0.0), "per_prompt": per_prompt, "n": int(len(cos))}


def shows_concept(attrs: Mapping[str, Any], concept: Mapping[str, Sequence[str]]) -> bool:
    """Whether one attribute reading is a face showing every value set of ``concept``."""
    return bool(attrs.get("is_face", True)) and all(attrs.get(k) in set(v) for k, v in concept.items())


def concept_rates(src_attrs: Sequence[Mapping[str, Any]], trg_attrs: Sequence[Mapping[str, Any]],
                  concept: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """``source_rate`` and ``finetuned_rate`` (shares of the samples showing
    ``concept``), ``kept`` (of the source samples showing it, the share whose
    paired fine-tuned sample does; None when no source sample shows it) and
    the counts."""
    if len(src_attrs) != len(trg_attrs) or not src_attrs:
        raise ValueError(f"concept_rates needs paired, non-empty readings: {len(src_attrs)} vs {len(trg_attrs)}")
    src = [shows_concept(a, concept) for a in src_attrs]
    trg = [shows_concept(a, concept) for a in trg_attrs]
    n_src = sum(src)
    kept = sum(1 for s, t in zip(src, trg) if s and t)
    return {"source_rate": n_src / len(src), "finetuned_rate": sum(trg) / len(trg),
            "kept": kept / n_src if n_src else None, "n_source_showing": n_src, "n": len(src)}
