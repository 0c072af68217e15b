"""Curation pipelines, ``curate_<dataset>`` for every declared dataset:
a CLIP similarity filter (AAHQ), CLIP zero-shot removal (MetFaces' glasses),
the whole folder, or a few-shot split. Images are prepared at the source
model's resolution (its ``sample_size``).

Nodes are thin: validation, ingestion and filtering live in ``core.data``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion_transfer.core.data.contact_sheet import contact_sheet
from diffusion_transfer.core.data.curation import curate_by_score, curate_zero_shot
from diffusion_transfer.core.data.embeddings import (
    cached_embeddings,
    scores_from_embeddings,
    text_embeddings,
    zero_shot_probabilities,
)
from diffusion_transfer.core.data.captions import read_captions
from diffusion_transfer.core.data.images import ImageFolderError, ingest_images
from diffusion_transfer.core.data.selection import EmptyCurationError, few_shot_split
from diffusion_transfer.datasets.folders import ImageFolder
from diffusion_transfer.pipelines.model_space import pixel_size
from diffusion_transfer.project.schema import CurateParams, DatasetParams, InvalidParametersError
from diffusion_transfer.pipelines.shortfall import KEY as SHORTFALLS, fewer_than_asked
from diffusion_transfer.pipelines.skipped_files import records_for, sidecar_summary


def model_resolution(source_model: Any, curation: CurateParams, where: str) -> int:
    """The source model's image size (its ``sample_size``, times the
    autoencoder's downscaling for a latent model); an explicit ``resolution`` must agree."""
    size = source_model.config.sample_size
    if isinstance(size, (list, tuple)) and len(set(size)) == 1:
        size = size[0]
    if not isinstance(size, (list, tuple)):
        size = pixel_size(source_model)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise InvalidParametersError(f"The source model's sample_size {list(size)} is not square; this project "
                                         "trains and samples square images")
        size = size[0]
    if curation.resolution is not None and curation.resolution != int(size):
        raise InvalidParametersError(
            f"Invalid parameters in '{where}resolution': {curation.resolution} differs from the source model's "
            f"sample_size {int(size)}. Images are prepared at the model's resolution: remove '{where}resolution' "
            f"or set it to {int(size)}.")
    return int(size)


def _ingest(folder: ImageFolder, d: DatasetParams, size: int):
    """The folder's images at ``size``; when none is usable, the error names
    the dataset's parameters as well as the folder."""
    try:
        return ingest_images(folder.files, resolution=size, min_size=d.curation.min_size)
    except ImageFolderError as err:
        entry = d.images or f"the catalog entry {d.name}_raw"
        raise ImageFolderError(
            f"datasets.{d.name}.images ({entry}): {err}. Images are prepared at {size}x{size}, the source model's "
            f"sample_size; 'datasets.{d.name}.curation.min_size' sets the smallest side accepted") from None


def curate(folder: ImageFolder, clip: Any, source_model: Any, dataset: DatasetParams,
           features_root: str = "data/04_feature") -> tuple[dict, dict, dict, Any]:
    """Ingest a folder, filter it with CLIP, return the curated set, the
    reference set (every valid image), a summary and a contact sheet."""
    p, name = dataset.curation, dataset.name
    prefix = f"datasets.{name}.curation."
    ingest = _ingest(folder, dataset, model_resolution(source_model, p, prefix))
    images, names = ingest.images, list(ingest.names)
    # Image embeddings are cached per (images, CLIP weights): re-running with a
    # new prompt or threshold does not re-encode the dataset.
    clip_id = getattr(clip, "weights_label", type(clip).__name__)
    cache = Path(p.embeddings_cache or Path(features_root) / "clip_embeddings") / f"{name}.npy"
    img_emb = cached_embeddings(clip.encode_images, images, cache, key=clip_id)
    common = dict(exclude=p.exclude, skipped=ingest.skipped, notes=ingest.notes, param_prefix=prefix)
    if p.prompt is not None:
        scores = scores_from_embeddings(img_emb, text_embeddings(clip.encode_text, p.prompt))
        result = curate_by_score(names, scores.reshape(-1), threshold=p.threshold, top_n=p.top_n,
                                     criteria={"prompt": p.prompt}, **common)
    elif p.remove_prompts:
        prompts = list(p.keep_prompts) + list(p.remove_prompts)
        probs = zero_shot_probabilities(img_emb, text_embeddings(clip.encode_text, prompts))
        remove = list(range(len(p.keep_prompts), len(prompts)))
        result = curate_zero_shot(names, probs, remove, threshold=p.remove_threshold,
                                      criteria={"keep_prompts": p.keep_prompts, "remove_prompts": p.remove_prompts},
                                      **common)
    else:
        result = curate_by_score(names, np.zeros(len(names)), top_n=len(names), **common)
    kept_idx = np.asarray(result.kept_idx, dtype=int)
    if kept_idx.size == 0:
        raise EmptyCurationError(
            f"{prefix}exclude: nothing is left after the exclusion list ({len(p.exclude)} names)")
    summary = {"dataset": name, "source": folder.source, "folder": str(folder.root), "clip": clip_id,
               **result.summary(), "sidecar": sidecar_summary(folder, names),
               SHORTFALLS: fewer_than_asked(f"curate_{name}", f"{prefix}top_n", p.top_n if p.prompt is not None else None,
                                            len(names), "images by CLIP score",
                                            f"the folder has {len(names)} usable images "
                                            f"({len(ingest.skipped)} skipped as invalid)")}
    sheet = result.contact_sheet(images)
    kept_names = result.kept_names
    curated = {
        "images": torch.from_numpy(images[kept_idx]),
        "meta": {"names": kept_names, "records": records_for(folder, kept_names), "dataset": name,
                 **_captions(folder, kept_names)},
    }
    reference = {
        "images": torch.from_numpy(images),
        "meta": {"names": names, "records": records_for(folder, names), "dataset": name},
    }
    return curated, reference, summary, sheet


def _captions(folder: ImageFolder, names: list[str]) -> dict[str, list[str]]:
    """The images' lines of the folder's metadata.jsonl (a text-to-image dataset), when it has one."""
    captions = read_captions(folder.root) if getattr(folder, "source", "folder") == "folder" else {}
    return {"captions": [captions.get(n) for n in names]} if captions else {}


def curate_few_shot(folder: ImageFolder, source_model: Any, dataset: DatasetParams) -> tuple[dict, dict, dict, Any]:
    """A deterministic N-shot split of a folder: the N training images and the
    rest as the evaluation reference (FID/KID), with a summary and a sheet."""
    p, name = dataset.curation, dataset.name
    prefix = f"datasets.{name}.curation."
    if p.n_shot is None:
        raise InvalidParametersError(f"Invalid parameters in '{prefix}n_shot': a few_shot dataset needs it")
    ingest = _ingest(folder, dataset, model_resolution(source_model, p, prefix))
    images, names = ingest.images, list(ingest.names)
    excluded = sorted(set(p.exclude) & set(names))
    usable = [i for i, n in enumerate(names) if n not in set(p.exclude)]
    shot, rest = few_shot_split([names[i] for i in usable], p.n_shot, p.split_seed, param_prefix=prefix)
    shot_idx, rest_idx = np.asarray(usable)[shot], np.asarray(usable)[rest]
    if rest_idx.size < 2:
        raise EmptyCurationError(f"{prefix}n_shot={p.n_shot} leaves {rest_idx.size} images for the "
                                     "evaluation reference; FID/KID need at least 2")
    shot_names, rest_names = [names[i] for i in shot_idx], [names[i] for i in rest_idx]
    summary = {"dataset": name, "source": folder.source, "folder": str(folder.root), "few_shot": True,
               "threshold": None, "top_n": None,
               "counts": {"files": len(folder.files), "skipped_invalid": len(ingest.skipped), "valid": len(names),
                          "kept": len(shot_names), "reference": len(rest_names), "excluded": len(excluded),
                          "dropped_by_score": 0, "dropped_by_zero_shot": 0},
               "criteria": {"n_shot": p.n_shot, "split_seed": p.split_seed},
               "kept": shot_names, "excluded": excluded,
               "skipped": [{"file": n, "reason": r} for n, r in ingest.skipped],
               "sidecar": sidecar_summary(folder, names)}
    sheet = contact_sheet(images[shot_idx], labels=shot_names, columns=min(10, len(shot_idx)),
                              title=f"{name}: {p.n_shot}-shot training set (split seed {p.split_seed})")
    curated = {"images": torch.from_numpy(images[shot_idx]),
               "meta": {"names": shot_names, "records": records_for(folder, shot_names), "dataset": name,
                        **_captions(folder, shot_names)}}
    reference = {"images": torch.from_numpy(images[rest_idx]),
                 "meta": {"names": rest_names, "records": records_for(folder, rest_names), "dataset": name,
                          "role": "held-out reference (everything but the training shots)"}}
    return curated, reference, summary, sheet
