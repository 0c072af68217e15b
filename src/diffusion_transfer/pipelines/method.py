"""The method template: fine-tune -> sample -> evaluate -> report.

One template, instantiated per method x dataset with a Kedro namespace
(``sdft_aahq.finetuned_model`` ...), resolved by the catalog's dataset
factories. Shared inputs (the source model, the curated set, the noise bank,
the source model's samples) stay outside the namespace.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kedro.pipeline import Node, Pipeline, node
from PIL import Image

from diffusion_transfer.core.data.images import to_tensor, to_uint8
from diffusion_transfer.core.methods import METHODS, build_method, expand_preset
from diffusion_transfer.core.methods.registry import MethodInfo
from diffusion_transfer.core.methods.a3ft import attention_blocks
from diffusion_transfer.core.methods.anl import image_conditions, masked_images, text_conditions
from diffusion_transfer.core.models.adapted import AdaptedUNet, parameter_counts
from diffusion_transfer.core.models.unet import build_unet, learns_variance
from diffusion_transfer.core.sampling import make_noise_bank, model_eps_fn, sample_ddim, sample_ddpm
from diffusion_transfer.core.models.scheduler_config import attach_scheduler_config, scheduler_config_of
from diffusion_transfer.core.training import TrainConfig, train
from diffusion_transfer.pipelines.params import (
    DatasetParams,
    InvalidParametersError,
    MethodParams,
    SamplingParams,
    TrainParams,
    parse,
)
from diffusion_transfer.pipelines.report import build_report, evaluate
from diffusion_transfer.pipelines.schedule import model_schedule, resolve_schedule
from diffusion_transfer.pipelines.utils import inference_setup
from diffusion_transfer.training_samples import training_sampler, training_samples_strip
from diffusion_transfer.pipelines.translate import (
    evaluate_translations,
    select_translation_inputs,
    translate,
    translation_grid,
)


def resolve_run(method: dict, dataset: dict, train_defaults: dict) -> dict[str, Any]:
    """Merge method defaults, the dataset's per-method overrides and the
    training defaults into one validated run configuration.

    Training settings, later winning: ``train``, ``methods.<m>.train``,
    ``datasets.<d>.train``, ``datasets.<d>.method_overrides.<m>.train`` (e.g.
    TAN's 300 iterations where the dataset gives every other method 5,000)."""
    m = parse(MethodParams, method, "methods")
    d = parse(DatasetParams, dataset, "datasets")
    override = dict(d.method_overrides.get(m.name, {}))
    run_train = override.pop("train", {}) or {}
    if not isinstance(run_train, dict):
        raise ValueError(f"datasets.{d.name}.method_overrides.{m.name}.train must be a mapping, got {run_train!r}")
    try:  # a preset names the paper's values (SDFT Table 5); each layer's own keys win over its preset
        hyper = {**expand_preset(m.name, m.hyperparameters()), **expand_preset(m.name, override)}
    except ValueError as err:
        raise InvalidParametersError(f"Invalid parameters in 'methods.{m.name}' or "
                                     f"'datasets.{d.name}.method_overrides.{m.name}': {err}") from None
    t = parse(TrainParams, {**train_defaults, **m.train, **d.train, **run_train},
              f"train (with methods.{m.name}.train and datasets.{d.name}.train"
              + (f" and datasets.{d.name}.method_overrides.{m.name}.train)" if run_train else ")"))
    return {"run": f"{m.name}_{d.name}", "method": m.name, "dataset": d.name, "hyperparameters": hyper,
            "train": t.run_config(), "samples": t.sample_settings()}


def _fingerprint(tensors) -> bytes:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


def finetune(source_model, curated: dict, method: dict, dataset: dict, train_defaults: dict,
             schedule: dict, checkpoint_root: str, conditions: dict | None = None, classifier=None):
    """Fine-tune (or, for ``scratch``, train from a fresh init) on the curated
    set. ``conditions`` (ANL): ``{"embeddings": (N, D)}``, one per image;
    ``classifier`` (TAN): the noisy domain classifier."""
    run = resolve_run(method, dataset, train_defaults)
    sched, schedule_info = resolve_schedule(source_model, schedule)
    spec = build_method(run["method"], run["hyperparameters"], sched)
    if spec.needs_classifier:
        if classifier is None:
            raise ValueError(f"method {run['method']!r} needs the domain classifier but the pipeline gave none")
        spec = spec.with_classifier(classifier)
    config = TrainConfig(**run["train"])
    if spec.init == "random":
        torch.manual_seed(config.seed)
        student = build_unet(dict(source_model.config))
    else:  # a copy: the source model stays the untouched teacher / reference
        student = copy.deepcopy(source_model)
    cond = conditions["embeddings"].float() if conditions is not None else None
    if spec.conditional and cond is None:
        raise ValueError(f"method {run['method']!r} is conditional but the pipeline gave it no conditions")
    torch.manual_seed(config.seed)  # added modules initialise reproducibly
    student = spec.build_student(student, int(cond.shape[1]) if cond is not None else None)
    teacher = source_model if spec.needs_teacher else None
    images = to_tensor(curated["images"].numpy())
    if cond is not None and cond.shape[0] != images.shape[0]:
        raise ValueError(f"{cond.shape[0]} condition embeddings for {images.shape[0]} training images")
    # Checkpoints are keyed by the configuration, the source weights and the
    # training images, so that any change starts a fresh run instead of
    # resuming a different one.
    trained_by = {k: v for k, v in run.items() if k != "samples"}  # samples during training change no weight
    key = hashlib.sha256(json.dumps({**trained_by, "schedule": sched.describe()}, sort_keys=True).encode())
    key.update(_fingerprint(source_model.state_dict().values()))
    key.update(_fingerprint([curated["images"]] + ([cond] if cond is not None else [])))
    if classifier is not None and spec.needs_classifier:
        key.update(_fingerprint(classifier.state_dict().values()))
    key = key.hexdigest()[:12]
    ckpt_dir = Path(checkpoint_root) / run["run"] / key
    sampler = training_sampler(run, config, student, source_model, sched, cond, ckpt_dir)  # issue 17
    result = train(student, spec.loss_fn, images, config, teacher=teacher, conditions=cond,
                   checkpoint_dir=ckpt_dir, desc=f"{run['run']}", on_log=sampler if config.num_processes == 1 else None)
    model = result.ema_model if result.ema_model is not None else result.model
    # The fine-tuned model keeps the schedule it was trained with (saved beside its config.json).
    attach_scheduler_config(model, {**(scheduler_config_of(source_model) or {}), **sched.scheduler_config()})
    history = {"noise_schedule": schedule_info, "run": run, "history": result.history, "resumed_from_step": result.resumed_from_step,
               "checkpoint_dir": str(ckpt_dir), "parameters": trainable_report(student, source_model, run["method"]),
               "schedule": result.schedule}  # EMA decay and lr warm-up reached (core/training/ema.py)
    if sampler is not None:
        history["training_samples"] = sampler.finish(model, "final (EMA)" if result.ema_model is not None else "final")
    return model, history


def finetune_guided(source_model, curated: dict, method: dict, dataset: dict, train_defaults: dict,
                    schedule: dict, checkpoint_root: str, classifier):
    """:func:`finetune` with the noisy domain classifier (TAN)."""
    return finetune(source_model, curated, method, dataset, train_defaults, schedule, checkpoint_root,
                    classifier=classifier)


def trainable_report(student, source_model, method: str) -> dict[str, Any]:
    """Trainable parameter counts and shares of the source model's size (the
    papers' convention), with the attention-block share for attn and a3ft."""
    counts = parameter_counts(student, base=source_model)
    if method not in ("attn", "a3ft"):
        return counts
    unet = student.unet if isinstance(student, AdaptedUNet) else student
    n_attn = sum(p.numel() for _, block in attention_blocks(unet) for p in block.parameters())
    counts["attention_block_parameters"] = n_attn
    counts["attention_block_share"] = n_attn / counts["base_parameters"] if counts["base_parameters"] else 0.0
    return counts


def embed_conditions(curated: dict, clip, method: dict, dataset: dict) -> dict:
    """ANL's c = phi(x) for every training image, computed once per (images,
    CLIP weights) and cached on disk (Eq. 7)."""
    from diffusion_transfer.core.data.embeddings import cached_embeddings

    m = parse(MethodParams, method, "methods")
    name = parse(DatasetParams, dataset, "datasets").name
    clip_id = getattr(clip, "weights_label", type(clip).__name__)
    cache = Path(m.condition.embeddings_cache) / f"{name}.npy"
    emb = cached_embeddings(clip.encode_images, curated["images"].numpy(), cache, key=clip_id)
    return {"embeddings": torch.from_numpy(emb), "meta": {"clip": clip_id, "n": int(emb.shape[0])}}


def sampling_conditions(curated: dict, noise_bank: dict, clip, method: dict, sampling: dict) -> dict:
    """One condition per noise in the bank: training image i (cycled), masked
    with a random rectangle of rate delta (ANL section 3.3), through CLIP."""
    m = parse(MethodParams, method, "methods")
    p = parse(SamplingParams, sampling, "sampling")
    n = len(noise_bank["noise"])
    images = to_tensor(curated["images"].numpy())
    picked = images[torch.arange(n) % images.shape[0]]
    gen = torch.Generator().manual_seed(p.seed + 2)
    masked = masked_images(picked, m.condition.mask_rate, gen)
    return {"embeddings": image_conditions(clip, masked),
            "meta": {"mask_rate": m.condition.mask_rate, "n": n, "images": "training images, cycled"}}


def create_noise_bank(sampling: dict, source_model) -> dict:
    p = parse(SamplingParams, sampling, "sampling")
    size = int(source_model.config.sample_size)
    bank = make_noise_bank(p.n_samples, (3, size, size), seed=p.seed)
    return {"noise": bank, "meta": {"seed": p.seed, "n": p.n_samples}}


def _generate(model, noise: torch.Tensor, p: SamplingParams, sched, conditions: torch.Tensor | None) -> torch.Tensor:
    from tqdm.auto import tqdm

    device, dtype = inference_setup(p.precision)
    model.eval().to(device)
    eps_fn = model_eps_fn(model, sched, autocast_dtype=dtype)
    out = []
    gen = torch.Generator().manual_seed(p.seed + 1)  # CPU noise: the same samples on every device
    with tqdm(total=len(noise), desc=f"sampling ({p.sampler}, {p.steps} steps)", unit="img") as bar:
        for i in range(0, len(noise), p.batch_size):
            x = noise[i : i + p.batch_size].to(device)
            ctx = model.conditioned(conditions[i : i + p.batch_size].to(device)) if conditions is not None \
                else contextlib.nullcontext()
            with ctx:
                if p.sampler == "ddim":
                    x0 = sample_ddim(eps_fn, x, sched, steps=p.steps, eta=p.eta, generator=gen)
                else:
                    x0 = sample_ddpm(eps_fn, x, sched, steps=p.steps, generator=gen)
            out.append(x0.float().cpu())
            bar.update(len(x))
    return torch.cat(out)


def sample(model, noise_bank: dict, sampling: dict, schedule: dict, conditions: dict | None = None) -> dict:
    """Generate one image per noise in the bank (same noise for every model);
    a conditional model (ANL) takes the i-th of ``conditions["embeddings"]``."""
    p = parse(SamplingParams, sampling, "sampling")
    sched = model_schedule(model, schedule)
    cond = conditions["embeddings"] if conditions is not None else None
    if cond is None and isinstance(model, AdaptedUNet) and model.adapter.needs_condition:
        raise ValueError(f"the {model.kind} model is conditional: sampling needs conditions")
    images = _generate(model, noise_bank["noise"], p, sched, cond)
    meta = {"sampler": p.sampler, "steps": p.steps, "eta": p.eta}
    if p.sampler == "ddpm":  # ancestral sampling: the model's learned variance, else the fixed one
        meta["variance"] = ("learned (the model's variance channels, guided-diffusion's learned range)"
                            if learns_variance(model) else "fixed (posterior beta-tilde)")
    if conditions is not None:
        meta["conditions"] = conditions.get("meta", {})
    return {"images": torch.from_numpy(to_uint8(images)), "meta": meta}


def sample_target(model, noise_bank: dict, sampling: dict, schedule: dict, dataset: dict,
                  conditions: dict | None = None) -> dict:
    """:func:`sample` on the first ``datasets.<name>.n_samples`` noises of the
    bank (all when unset). The bank is prefix-stable, so target sample i still
    shares its noise with source sample i."""
    d = parse(DatasetParams, dataset, "datasets")
    n_bank = len(noise_bank["noise"])
    n = d.n_samples or n_bank
    if n > n_bank:
        raise InvalidParametersError(
            f"Invalid parameters in 'datasets.{d.name}.n_samples': {n} is more than the noise bank's "
            f"{n_bank} (sampling.n_samples)")
    bank = {**noise_bank, "noise": noise_bank["noise"][:n]}
    if conditions is not None:
        conditions = {**conditions, "embeddings": conditions["embeddings"][:n]}
    return sample(model, bank, sampling, schedule, conditions)


def sample_prompts(model, noise_bank: dict, clip, method: dict, sampling: dict, schedule: dict) -> Image.Image:
    """Text-to-image samples of a conditional model (ANL section 4): each
    prompt's CLIP text embedding as the condition, one row per prompt, on the
    first noises of the bank. Without prompts, a one-line note image."""
    m = parse(MethodParams, method, "methods")
    p = parse(SamplingParams, sampling, "sampling")
    sched = model_schedule(model, schedule)
    prompts, k = m.condition.prompts, min(m.condition.n_per_prompt, len(noise_bank["noise"]))
    if not prompts:
        return _text_image("no prompts configured (methods.anl.condition.prompts)")
    rows = []
    for prompt in prompts:
        cond = text_conditions(clip, prompt).expand(k, -1)
        rows.append(to_uint8(_generate(model, noise_bank["noise"][:k], p, sched, cond)))
    return _labelled_rows(rows, prompts)


def _text_image(text: str) -> Image.Image:
    from PIL import ImageDraw

    img = Image.new("RGB", (8 * len(text) + 16, 24), "white")
    ImageDraw.Draw(img).text((8, 6), text, fill="black")
    return img


def _labelled_rows(rows: list[np.ndarray], labels: list[str], scale: int = 2) -> Image.Image:
    from PIL import ImageDraw

    n, h, w = rows[0].shape[0], rows[0].shape[1] * scale, rows[0].shape[2] * scale
    label_w = 8 + 6 * max(len(s) for s in labels)
    sheet = Image.new("RGB", (label_w + n * (w + 2), len(rows) * (h + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (row, label) in enumerate(zip(rows, labels)):
        y = r * (h + 2)
        draw.text((4, y + h // 2 - 5), label, fill="black")
        for i, img in enumerate(row):
            sheet.paste(Image.fromarray(img).resize((w, h), Image.NEAREST), (label_w + i * (w + 2), y))
    return sheet


def create_source_pipeline(source: dict[str, str], prefix: str = "") -> Pipeline:
    """One source model's samples from its own noise bank (one per source
    domain); ``source`` maps the roles (``source_model``, ``noise_bank``...)
    to the domain's catalog entries (``declared.SourceDomain.entries``)."""
    n = source
    return Pipeline(
        [
            node(create_noise_bank, ["params:sampling", n["source_model"]], n["noise_bank"],
                 name=f"{prefix}make_noise_bank", tags=["sample"]),
            node(sample, [n["source_model"], n["noise_bank"], "params:sampling", "params:schedule"],
                 n["source_samples"], name=f"{prefix}sample_source", tags=["sample"]),
            node(select_translation_inputs, [n["source_images"], n["source_model"], "params:translation"],
                 n["translation_inputs"], name=f"{prefix}select_translation_inputs", tags=["translate"]),
        ]
    )


def _train_and_sample_nodes(info: MethodInfo) -> list[Node]:
    """The fine-tuning and sampling nodes: plain, conditional (ANL) or guided (TAN)."""
    train_inputs = ["source_model", "curated", "params:method", "params:dataset", "params:train", "params:schedule",
                    "params:paths.checkpoints"]
    if info.conditional:
        # ANL: CLIP embeddings of the training images condition training; the
        # samples condition on masked training images (and text prompts).
        return [
            node(embed_conditions, ["curated", "condition_clip", "params:method", "params:dataset"],
                 "training_conditions", name="embed_conditions", tags=["train"]),
            node(finetune, train_inputs + ["training_conditions"], ["finetuned_model", "training_history"],
                 name="finetune", tags=["train"]),
            node(sampling_conditions, ["curated", "noise_bank", "condition_clip", "params:method", "params:sampling"],
                 "sampling_conditions", name="make_sampling_conditions", tags=["sample"]),
            node(sample_target, ["finetuned_model", "noise_bank", "params:sampling", "params:schedule",
                                 "params:dataset", "sampling_conditions"],
                 "target_samples", name="sample_finetuned", tags=["sample"]),
            node(sample_prompts, ["finetuned_model", "noise_bank", "condition_clip", "params:method", "params:sampling",
                                  "params:schedule"], "prompt_grid", name="sample_prompts", tags=["sample"]),
        ]
    if info.guided:
        # TAN: the dataset's noisy domain classifier guides training.
        return [
            node(finetune_guided, train_inputs + ["domain_classifier"], ["finetuned_model", "training_history"],
                 name="finetune", tags=["train"]),
            node(sample_target, ["finetuned_model", "noise_bank", "params:sampling", "params:schedule",
                                 "params:dataset"], "target_samples",
                 name="sample_finetuned", tags=["sample"]),
        ]
    return [
        node(finetune, train_inputs, ["finetuned_model", "training_history"], name="finetune", tags=["train"]),
        node(sample_target, ["finetuned_model", "noise_bank", "params:sampling", "params:schedule",
                             "params:dataset"], "target_samples",
             name="sample_finetuned", tags=["sample"]),
    ]


def create_method_pipeline(method: str, dataset: str, source: dict[str, str]) -> Pipeline:
    """``{method}_{dataset}``: the template in the run's namespace, wired to
    the dataset's curated sets and to its source domain's model, noise bank
    and samples (``source``: their catalog entries)."""
    info = METHODS[method]
    train_and_sample = _train_and_sample_nodes(info)
    translate_inputs = ["finetuned_model", "source_model", "domain_classifier", "translation_inputs",
                        "params:translation", "params:dataset", "params:schedule"]
    translation = [
        node(translate, translate_inputs + (["sampling_conditions"] if info.conditional else []),
             "translations", name="translate", tags=["translate"]),
        node(evaluate_translations, ["translations", "reference", "evaluation_clip", "attribute_classifier",
                                     "params:evaluation", "params:dataset"],
             "translation_metrics", name="evaluate_translations", tags=["evaluate"]),
        node(translation_grid, ["translations", "params:translation"], "translation_grid", name="translation_grid",
             tags=["report"]),
        node(training_samples_strip, ["training_history"], "training_samples", name="training_samples_strip",
             tags=["report"]),
    ]
    template = Pipeline(
        train_and_sample + translation + [
            node(evaluate,
                 ["source_samples", "target_samples", "curated", "reference", "evaluation_clip",
                  "attribute_classifier", "params:evaluation", "params:dataset"],
                 "metrics", name="evaluate", tags=["evaluate"]),
            node(build_report,
                 ["metrics", "training_history", "curation_summary", "source_samples", "target_samples",
                  "translation_metrics"],
                 ["report", "sample_grid", "loss_curve"], name="report", tags=["report"]),
        ]
    )
    shared = {"evaluation_clip", "attribute_classifier"} | ({"condition_clip"} if info.conditional else set())
    source = {k: v for k, v in source.items() if k != "source_images"}
    # The dataset's noisy domain classifier: TAN's guidance, EGSDE's realism energy.
    extra_inputs = {"domain_classifier": f"{dataset}_domain_classifier"}
    return Pipeline(
        template,
        namespace=f"{method}_{dataset}",
        inputs={**{s: s for s in shared}, **source, "curated": f"{dataset}_curated", "reference": f"{dataset}_reference",
                "curation_summary": f"{dataset}_curation_summary", **extra_inputs},
        parameters={
            "params:method": f"params:methods.{method}",
            "params:dataset": f"params:datasets.{dataset}",
            "params:train": "params:train",
            "params:schedule": "params:schedule",
            "params:sampling": "params:sampling",
            "params:evaluation": "params:evaluation",
            "params:paths.checkpoints": "params:paths.checkpoints",
            "params:translation": "params:translation",
        },
    )
