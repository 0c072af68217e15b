"""The translate stage of the method template (SDFT paper section 4.2, Table 1).

A fixed set of source-domain inputs (``translation_inputs``: FaceWorld
photos in the demo, FFHQ in ``conf/paper``) is translated by the fine-tuned
model with each enabled method (SDEdit, ILVR, EGSDE, DDIB), then scored for
faithfulness (PSNR, SSIM, LPIPS between each input and its translation) and
realism (FID, KID against the target dataset), plus FaceWorld attribute
retention from input to translation.
"""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from diffusion_transfer.core.data.images import to_tensor, to_uint8
from diffusion_transfer.core.metrics import attributes as attr_metrics
from diffusion_transfer.core.metrics.fid import compute_fid_kid
from diffusion_transfer.core.metrics.image_metrics import psnr, ssim
from diffusion_transfer.core.metrics.identity import IdentitySimilarity
from diffusion_transfer.core.metrics.lpips_metric import LPIPSMetric
from diffusion_transfer.core.models.adapted import AdaptedUNet
from diffusion_transfer.core.models.unet import learns_variance
from diffusion_transfer.core.provenance import environment_record
from diffusion_transfer.core.sampling import make_noise_bank, model_eps_fn
from diffusion_transfer.core.translation.common import TranslationBatch
from diffusion_transfer.core.translation.registry import TranslatorInfo, translator
from diffusion_transfer.core.world.classifier import predict_attributes
from diffusion_transfer.pipelines.evaluation import (
    ATTRIBUTES_WEIGHTS,
    EVALUATED_ATTRIBUTES,
    feature_extractor,
    reference_subset,
)
from diffusion_transfer.pipelines.model_space import pixel_size, to_images, to_model_space
from diffusion_transfer.pipelines.schedule import model_schedule
from diffusion_transfer.pipelines.shortfall import KEY as SHORTFALLS, fewer_than_asked
from diffusion_transfer.pipelines.skipped_files import skipped_records
from diffusion_transfer.pipelines.source_domain import source_count, source_images
from diffusion_transfer.pipelines.utils import inference_setup
from diffusion_transfer.project.resolved import ResolvedDataset
from diffusion_transfer.project.schema import (
    DatasetParams,
    EvaluationParams,
    InvalidParametersError,
    ScheduleParams,
    TranslationParams,
)

CHANNEL_CONVENTION = ("PSNR and SSIM on RGB (no luma conversion) after mapping [-1, 1] to [0, 1] (data range 1); "
                      "SSIM with an 11x11 Gaussian window, sigma 1.5, averaged over channels")


def select_translation_inputs(source_folder, source_model, translation: TranslationParams) -> dict:
    """``n_inputs`` source-domain images, a seeded subset of the folder (or of
    the source model's samples when the source has no images), at the source
    model's image size."""
    size = pixel_size(source_model)
    count = source_count(source_folder)
    if not count:
        raise ValueError(f"translation: no images in {getattr(source_folder, 'root', 'the source samples')}")
    order = np.random.default_rng(translation.seed).permutation(count)
    if isinstance(source_folder, dict):  # the source model's samples: every one is usable
        picked = source_images(source_folder, size)
        keep = order[: translation.n_inputs]
        picked.images, picked.names = picked.images[keep], [picked.names[i] for i in keep]
    else:  # draw a few spares so that unreadable files still leave n_inputs images
        files = sorted(source_folder.files)
        picked = source_images(source_folder, size, [files[i] for i in order[: min(count, translation.n_inputs + 16)]])
    if len(picked.names) < translation.n_inputs:
        raise ValueError(f"translation.n_inputs is {translation.n_inputs} but only {len(picked.names)} valid images were "
                         f"found in {picked.origin}")
    names = picked.names[: translation.n_inputs]
    meta: dict[str, Any] = {"names": names, "folder": picked.origin, "seed": translation.seed,
                            "skipped": [list(s) for s in picked.skipped]}
    if picked.records:
        meta["records"] = [picked.records.get(n, {}) for n in names]
    return {"images": torch.from_numpy(picked.images[: translation.n_inputs]), "meta": meta}


def translate(target_model, source_model, classifier, inputs: dict, translation: TranslationParams,
              dataset: ResolvedDataset, schedule: ScheduleParams, conditions: dict | None = None) -> dict:
    """Translate every input with each enabled method. Returns uint8 images per
    method (``inputs`` plus ``sdedit``, ``ilvr``, ``egsde``, ``ddib``) and, in
    ``meta``, each method's settings and wall time. A conditional model (ANL)
    takes the i-th of ``conditions["embeddings"]`` (cycled) for input i.
    The settings are ``translation`` with the dataset's overrides merged,
    resolved before the run (``dataset.translation_params``)."""
    p = dataset.translation_params
    sched = model_schedule(source_model, schedule)  # the fine-tuned model was trained with the same
    # A latent model translates its inputs' latents (docs/DEVIATIONS.md); the outputs are decoded.
    x_all = to_model_space(source_model, to_tensor(inputs["images"].numpy()))
    p.check_factors(int(x_all.shape[-1]))
    enabled = p.enabled()
    if not enabled:
        raise InvalidParametersError("Invalid parameters in 'translation': every method is disabled")
    uses = [use for use in (getattr(p, name).classifier_use() for name in enabled) if use]
    if uses and classifier is None:
        raise ValueError(f"{uses[0]} needs the domain classifier (classifier_<dataset>)")
    cond = conditions["embeddings"] if conditions is not None else None
    if cond is None and isinstance(target_model, AdaptedUNet) and target_model.adapter.needs_condition:
        raise ValueError(f"the {target_model.kind} model is conditional: translation needs conditions")
    device, dtype = inference_setup(p.precision, "translation.precision")
    target_model.eval().to(device)
    source_model.eval().to(device)
    target_eps, source_eps = (model_eps_fn(m, sched, dtype, channels_last=p.channels_last)
                              for m in (target_model, source_model))
    learned = learns_variance(target_model)
    if classifier is not None:
        classifier.eval().to(device)
    # EGSDE differentiates through the classifier: kept in float32
    features = (lambda x, t: classifier.features(x, t.to(x.device))[-1]) if classifier is not None else None
    # One start noise per input, shared by every method and every model.
    noise_all = make_noise_bank(len(x_all), tuple(x_all.shape[1:]), seed=p.seed + 7)
    out: dict[str, Any] = {"inputs": inputs["images"]}
    settings: dict[str, Any] = {}
    for name in enabled:
        block, t0 = getattr(p, name), p.editing_range(name)
        opts = p.options(name)  # ILVR / EGSDE: variant and options, resolved (docs/DEVIATIONS.md)
        settings[name] = {**block.model_dump(), **opts, **({"t0": t0} if t0 is not None else {})}
        if block.ancestral():  # which variance
            settings[name]["variance"] = ("learned (the model's variance channels)"
                                          if learned and opts.get("learned_variance", True) else "fixed (beta-tilde)")
        batch = functools.partial(TranslationBatch, schedule=sched, target_eps=target_eps, source_eps=source_eps,
                                  generator=torch.Generator().manual_seed(p.seed + 11), t0=t0, options=opts,
                                  features=features)
        start = time.perf_counter()
        results = _translate_batches(translator(name), block, batch, x_all, noise_all, p.batch_size, device,
                                     target_model, cond)
        settings[name]["seconds"] = round(time.perf_counter() - start, 2)
        out[name] = torch.from_numpy(to_uint8(torch.cat(results)))
    out["meta"] = {"methods": enabled, "settings": settings, "n_inputs": int(len(x_all)),
                   "inputs": inputs.get("meta", {}).get("folder"),
                   "skipped_inputs": skipped_records(inputs.get("meta", {}).get("skipped") or []),
                   "conditions": conditions.get("meta", {}) if conditions is not None else None,
                   SHORTFALLS: fewer_than_asked("translate", "translation.grid_inputs", p.grid_inputs,
                                                min(p.grid_inputs, len(x_all)), "inputs in the translation grid",
                                                f"the stage translates {len(x_all)} inputs (translation.n_inputs)")}
    return out


def _translate_batches(info: TranslatorInfo, block, batch, x_all: torch.Tensor, noise_all: torch.Tensor,
                       batch_size: int, device, target_model, cond: torch.Tensor | None) -> list[torch.Tensor]:
    """``info``'s translations of ``x_all``, batch by batch (float32 on the CPU, clamped to [-1, 1]);
    ``batch(x=..., noise=...)`` builds the :class:`TranslationBatch` its function takes."""
    results = []
    with tqdm(total=len(x_all), desc=f"translate ({info.label})", unit="img") as bar:
        for i in range(0, len(x_all), batch_size):
            x, noise = x_all[i : i + batch_size].to(device), noise_all[i : i + batch_size].to(device)
            idx = torch.arange(i, i + len(x))
            ctx = target_model.conditioned(cond[idx % cond.shape[0]].to(device)) if cond is not None \
                else contextlib.nullcontext()
            with ctx:
                y = info.run(block, batch(x=x, noise=noise))
            results.append(to_images(target_model, y.float()).clamp(-1, 1).cpu())
            bar.update(len(x))
    return results


def evaluate_translations(translations: dict, reference: dict, clip, attribute_classifier, evaluation: EvaluationParams,
                          dataset: DatasetParams) -> dict[str, Any]:
    """Faithfulness (input vs translation) and realism (translations vs the
    whole target dataset) per method; every number names its weights."""
    methods = translations["meta"]["methods"]
    x_in = to_tensor(translations["inputs"].numpy())
    n_ref = len(reference["images"])
    ref_images = reference_subset(reference["images"].numpy(), evaluation.max_reference_images)
    extractor = feature_extractor(evaluation, clip)
    metric_device = inference_setup()[0]
    lpips = LPIPSMetric(net=evaluation.lpips_net, backbone_weights=evaluation.lpips_backbone_weights, device=metric_device)
    identity = (IdentitySimilarity(evaluation.identity_weights, device=metric_device, batch_size=evaluation.batch_size)
                if evaluation.identity_weights and dataset.faces else None)
    in_attrs = None
    use_attrs = evaluation.attributes and dataset.attributes and attribute_classifier is not None
    if use_attrs:
        in_attrs = predict_attributes(attribute_classifier, translations["inputs"].numpy())
    rows: dict[str, dict[str, Any]] = {}
    for name in methods:
        y = to_tensor(translations[name].numpy())
        fk = compute_fid_kid(translations[name].numpy(), ref_images, extractor, ref_cache=Path(evaluation.cache_dir),
                             batch_size=evaluation.batch_size)
        row = {"psnr": float(psnr(x_in, y).mean()), "ssim": float(ssim(x_in, y).mean()),
               "lpips": lpips.mean_paired(x_in, y, batch_size=evaluation.batch_size), "fid": fk["fid"], "kid_x1e3": fk["kid_x1e3"],
               "seconds": translations["meta"]["settings"][name].get("seconds")}
        if identity is not None:
            row["identity"] = float(identity(x_in, y).mean())
        if use_attrs:
            out_attrs = predict_attributes(attribute_classifier, translations[name].numpy())
            try:
                row["retention"] = attr_metrics.attribute_retention(in_attrs, out_attrs, attributes=EVALUATED_ATTRIBUTES)["mean"]
            except ValueError:  # no input is a face: nothing to retain
                row["retention"] = None
            row["face_rate"] = attr_metrics.face_rate(out_attrs)
        rows[name] = row
    weights = {"fid_kid": extractor.weights, "lpips": lpips.label, "psnr_ssim": CHANNEL_CONVENTION}
    if identity is not None:
        weights["identity"] = identity.label
    if use_attrs:
        weights["attributes"] = ATTRIBUTES_WEIGHTS
    return {"dataset": dataset.name, "n_inputs": int(len(x_in)),
            "fid_reference": f"raw target set ({len(ref_images)} of {n_ref} images)",
            "settings": translations["meta"]["settings"], "rows": rows, "weights": weights,
            # unusable files met while drawing the inputs from the source images
            "inputs_folder": translations["meta"].get("inputs"),
            "skipped_inputs": translations["meta"].get("skipped_inputs", []),
            SHORTFALLS: translations["meta"].get(SHORTFALLS, []), "environment": environment_record()}


def translation_grid(translations: dict, translation: TranslationParams, scale: int = 2) -> Image.Image:
    """Rows: the input, then each method's translation; columns: the first
    ``grid_inputs`` inputs."""
    names = ["inputs"] + list(translations["meta"]["methods"])
    k = min(translation.grid_inputs, translations["inputs"].shape[0])
    rows = [translations[n].numpy()[:k] for n in names]
    h, w = rows[0].shape[1] * scale, rows[0].shape[2] * scale
    label_w = 60
    sheet = Image.new("RGB", (label_w + k * (w + 2), len(rows) * (h + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (row, name) in enumerate(zip(rows, names)):
        y = r * (h + 2)
        draw.text((4, y + h // 2 - 5), "input" if name == "inputs" else translator(name).label, fill="black")
        for i, img in enumerate(row):
            sheet.paste(Image.fromarray(img).resize((w, h), Image.NEAREST), (label_w + i * (w + 2), y))
    return sheet
