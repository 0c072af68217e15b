"""Fine-tuning nodes of the method template: the run's configuration
(method defaults, dataset overrides, training defaults), the fine-tuning
itself (plain, conditional for ANL, guided for TAN) and ANL's training
conditions. Checkpoints are keyed by everything that changes the weights."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from diffusion_transfer.core.data.captions import captions_for
from diffusion_transfer.core.data.embeddings import cached_embeddings
from diffusion_transfer.core.data.images import to_tensor
from diffusion_transfer.core.io import tensor_digest
from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.methods.registry import run_supports_text
from diffusion_transfer.core.methods.a3ft import attention_blocks
from diffusion_transfer.core.models.adapted import AdaptedUNet, parameter_counts
from diffusion_transfer.core.models.adm_extras import computed_parts_like
from diffusion_transfer.core.models.class_labels import class_label_of, set_class_label, using_class_label
from diffusion_transfer.core.models.latent import attach_latent_codec, latent_codec_of
from diffusion_transfer.core.models.lora import (FrozenBaseView, add_lora, base_unet, lora_parameters, merged_copy,
                                                 remove_lora)
from diffusion_transfer.core.models.lora_io import LORA_FOLDER, lora_loading_line, lora_weights_of
from diffusion_transfer.core.models.pipeline_folder import attach_pipeline_index, loading_line, pipeline_index_of
from diffusion_transfer.core.models.unet import build_unet
from diffusion_transfer.core.models.scheduler_config import attach_scheduler_config, scheduler_config_of
from diffusion_transfer.core.models.text_to_image import text_conditioning_of
from diffusion_transfer.core.provenance import environment_record
from diffusion_transfer.core.training import train
from diffusion_transfer.pipelines.finetune.class_images import class_images_of_run
from diffusion_transfer.pipelines.model_space import bind_dataset_label, cached_latents, describe_model_space
from diffusion_transfer.pipelines.schedule import resolve_schedule
from diffusion_transfer.pipelines.training_samples import training_sampler
from diffusion_transfer.project.resolved import TrainingRuns
from diffusion_transfer.project.schema import DatasetParams, MethodParams, ScheduleParams


def finetune(source_model, curated: dict, method: MethodParams, dataset: DatasetParams, runs: TrainingRuns,
             schedule: ScheduleParams, checkpoint_root: str, conditions: dict | None = None, classifier=None,
             class_images: dict | None = None):
    """Fine-tune (or, for ``scratch``, train from a fresh init) on the curated
    set. ``runs``: every run resolved before the pipeline started
    (``params:train``); ``conditions`` (ANL): ``{"embeddings": (N, D)}``,
    one per image (a text-to-image model: its captions' hidden states);
    ``classifier`` (TAN): the noisy domain classifier; ``class_images``
    (DreamBooth): the source model's samples of the class prompt. With
    ``train.adapter`` the method trains LoRA on the UNet's own layers
    (docs/LORA.md): the model is saved merged, its LoRA beside it."""
    run = runs.of(method, dataset)
    sched, schedule_info = resolve_schedule(source_model, schedule)
    spec = build_method(run.method, run.hyperparameters, sched)
    if spec.needs_classifier:
        if classifier is None:
            raise ValueError(f"method {run.method!r} needs the domain classifier but the pipeline gave none")
        spec = spec.with_classifier(classifier)
    prior = _class_examples(source_model, class_images, checkpoint_root) if spec.needs_class_images else None
    if prior is not None:
        spec = spec.with_class_examples(*prior)
    config = run.train
    source_weights = tensor_digest(source_model.state_dict().values())  # before an adapter goes in
    as_it_came = class_label_of(source_model), [p.requires_grad for p in source_model.parameters()]
    cond = conditions["embeddings"].float() if conditions is not None else None
    if text_conditioning_of(source_model) is not None and (cond is None or not run_supports_text(run.method)):
        raise ValueError(f"method {run.method!r} cannot train the text-to-image source model (the pipeline gave "
                         "it no captions, or it does not support this kind)")
    if spec.conditional and cond is None:
        raise ValueError(f"method {run.method!r} is conditional but the pipeline gave it no conditions")
    student, label = _student(source_model, spec, run, dataset, cond)
    parameters = trainable_report(student, source_model, run.method, run.adapter)
    teacher = None if not spec.needs_teacher else FrozenBaseView(student) if run.adapter else source_model
    # A latent model trains on its autoencoder's latents, encoded once (pipelines/model_space.py).
    images = cached_latents(source_model, to_tensor(curated["images"].numpy()), Path(checkpoint_root) / "latents")
    if cond is not None and cond.shape[0] != images.shape[0]:
        raise ValueError(f"{cond.shape[0]} condition embeddings for {images.shape[0]} training images")
    record, key, identity = _checkpoint_key(run, sched, label, source_model, source_weights, curated,
                                            [cond] + (list(prior) if prior is not None else []),
                                            classifier if spec.needs_classifier else None)
    ckpt_dir = Path(checkpoint_root) / run.name / key
    # The source model's samples: its own object, or with LoRA on it, the student without adapters.
    reference = FrozenBaseView(student) if student is source_model else source_model
    # issue 17; not for a text-to-image model yet: its samples are the sample stage's, with its prompts
    text = text_conditioning_of(source_model) is not None
    sampler = None if text else training_sampler(record, config, student, reference, sched, cond, ckpt_dir)
    # A teacher view runs the student, whose bound label is the dataset's already.
    bind = teacher is source_model and label is not None
    with using_class_label(teacher, label) if bind else contextlib.nullcontext():
        result = train(student, spec.loss_fn, images, config, teacher=teacher, conditions=cond,
                       checkpoint_dir=ckpt_dir, desc=run.name, on_log=sampler if config.num_processes == 1 else None,
                       run_identity=identity)
    model = result.ema_model if result.ema_model is not None else result.model
    if run.adapter is not None:
        model = merged_copy(model)  # the LoRA folded into the base weights; its weights go to lora/ beside
        if student is source_model:
            _restore(source_model, *as_it_came)
    # The fine-tuned model keeps the schedule it was trained with (saved beside its config.json).
    attach_scheduler_config(model, {**(scheduler_config_of(source_model) or {}), **sched.scheduler_config()})
    # Where the catalog's "{run}.finetuned_model" saves it (conf/base/catalog.yml), for the report.
    folder = Path(checkpoint_root).parent / run.name / "model"
    history = {"noise_schedule": schedule_info, "model_space": describe_model_space(model),
               "saved_model": _saved_model(model, folder), "run": record, "history": result.history,
               "resumed_from_step": result.resumed_from_step, "checkpoint_dir": str(ckpt_dir), "parameters": parameters,
               "schedule": result.schedule,  # EMA decay and lr warm-up reached (core/training/ema.py)
               "environment": environment_record()}  # commit, versions, device (core/provenance.py)
    if sampler is not None:
        history["training_samples"] = sampler.finish(model, "final (EMA)" if result.ema_model is not None else "final")
    return model, history


def _student(source_model, spec, run, dataset: DatasetParams, cond):
    """The model to train and its bound class label: a fresh init
    (``scratch``), the source model itself under LoRA for a method that adds
    nothing (naive, sdft: its frozen weights are the base, so training holds
    one UNet; the LoRA comes out after), else a copy; then the method's
    modules and the LoRA, each seeded by ``train.seed``."""
    config = run.train
    if spec.init == "random":
        torch.manual_seed(config.seed)
        student = computed_parts_like(build_unet(dict(source_model.config), type(source_model)), source_model)
        attach_latent_codec(student, latent_codec_of(source_model))  # the same autoencoder, output layout
        attach_pipeline_index(student, pipeline_index_of(source_model))
    elif run.adapter is not None and spec.prepare is None:
        student = source_model
    else:  # a copy: the source model stays the untouched teacher / reference
        student = copy.deepcopy(source_model)
    label = bind_dataset_label(student, class_label_of(source_model) if dataset.class_label is None
                               else dataset.class_label, f"datasets.{dataset.name}.class_label")
    torch.manual_seed(config.seed)  # added modules initialise reproducibly
    student = spec.build_student(student, int(cond.shape[1]) if cond is not None else None)
    if run.adapter is not None:
        add_lora(student, run.adapter, config.seed, where=f"train.adapter.target_modules (run {run.name})")
    return student, label


def _class_examples(source_model, class_images: dict | None, checkpoint_root: str):
    """DreamBooth's class examples in the model's space (encoded once, as the
    training images are) and the class prompt's hidden states (1, L, D)."""
    if class_images is None:
        raise ValueError("method 'dreambooth' needs its class images but the pipeline gave none")
    images = cached_latents(source_model, to_tensor(class_images["images"].numpy()),
                            Path(checkpoint_root) / "latents")
    return images, text_conditioning_of(source_model).encode([class_images["meta"]["class_prompt"]])


def _restore(source_model, label: int | None, requires_grad: list[bool]) -> None:
    """The source model as it came, after LoRA trained on it: its own layers, trainable flags and label."""
    remove_lora(source_model)
    for p, flag in zip(source_model.parameters(), requires_grad, strict=True):
        p.requires_grad_(flag)
    if class_label_of(source_model) != label:
        set_class_label(source_model, label)


def _checkpoint_key(run, sched, label, source_model, source_weights: bytes, curated: dict, conditioning: list,
                    classifier):
    """The run's record, its checkpoint key and the identity each checkpoint records.

    Checkpoints are keyed by the configuration, the source weights and the
    training images, so that any change starts a fresh run instead of
    resuming a different one; each checkpoint records whose it is: one of
    another method or source model, copied or left in this folder, is never
    resumed (core/training/checkpoint.py)."""
    record = run.record()
    trained_by = {k: v for k, v in record.items() if k != "samples"}  # samples during training change no weight
    codec = latent_codec_of(source_model)
    space = {k: v for k, v in (("class_label", label), ("autoencoder", codec and codec.fingerprint())) if v is not None}
    settings = {**trained_by, "schedule": sched.describe(), **space}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    key.update(source_weights)
    key.update(tensor_digest([curated["images"]] + [c for c in conditioning if c is not None]))
    if classifier is not None:
        key.update(tensor_digest(classifier.state_dict().values()))
    key = key.hexdigest()[:12]
    identity = {"method": run.method, "source": source_weights.hex()[:16], "checkpoint_key": key,  # images too
                "settings": {k: v for k, v in settings.items() if k not in ("method", "run")}}  # named apart
    return record, key, identity


def _saved_model(model, folder: Path) -> dict[str, Any]:
    """Where the model is saved and the line that loads it; with LoRA, where
    its adapter is and the line that loads that onto the source model."""
    saved: dict[str, Any] = {"folder": str(folder), "load": loading_line(model, folder)}
    weights = lora_weights_of(model)
    if weights is not None:
        saved["lora"] = {"folder": str(folder / LORA_FOLDER), "format": weights.kind,
                         "load": lora_loading_line(weights.kind, folder, type(base_unet(model)).__name__)}
    return saved


def finetune_guided(source_model, curated: dict, method: MethodParams, dataset: DatasetParams, runs: TrainingRuns,
                    schedule: ScheduleParams, checkpoint_root: str, classifier):
    """:func:`finetune` with the noisy domain classifier (TAN)."""
    return finetune(source_model, curated, method, dataset, runs, schedule, checkpoint_root,
                    classifier=classifier)


def generate_class_images(source_model, method: MethodParams, dataset: DatasetParams, runs: TrainingRuns,
                          checkpoint_root: str) -> dict:
    """DreamBooth's class images of the run: sampled once from the class prompt,
    then read from the cache (pipelines/finetune/class_images.py)."""
    return class_images_of_run(source_model, method, dataset, runs, checkpoint_root)


def finetune_with_class_images(source_model, curated: dict, method: MethodParams, dataset: DatasetParams,
                               runs: TrainingRuns, schedule: ScheduleParams, checkpoint_root: str, conditions: dict,
                               class_images: dict):
    """:func:`finetune` with DreamBooth's class images."""
    return finetune(source_model, curated, method, dataset, runs, schedule, checkpoint_root, conditions,
                    class_images=class_images)


def trainable_report(student, source_model, method: str, adapter=None) -> dict[str, Any]:
    """Trainable parameter counts and shares of the source model's size (the
    papers' convention), with the attention-block share for attn and a3ft;
    with an adapter, the LoRA parameters (trainable) and its settings. The
    source model's size never counts LoRA layers (it may hold the student's)."""
    counts = parameter_counts(student, base=source_model)
    lora = {id(p) for p in lora_parameters(student)}
    if adapter is not None:
        n_base = sum(p.numel() for p in source_model.parameters() if id(p) not in lora)
        n_lora = sum(p.numel() for p in lora_parameters(student))
        counts.update(base_parameters=n_base, trainable_share=counts["trainable_parameters"] / n_base,
                      lora_parameters=n_lora, lora_share=n_lora / n_base, adapter=adapter.describe())
        if "added_parameters" in counts:
            counts["added_share"] = counts["added_parameters"] / n_base
    if method not in ("attn", "a3ft"):
        return counts
    unet = student.unet if isinstance(student, AdaptedUNet) else student
    n_attn = sum(p.numel() for _, block in attention_blocks(unet) for p in block.parameters() if id(p) not in lora)
    counts["attention_block_parameters"] = n_attn
    counts["attention_block_share"] = n_attn / counts["base_parameters"] if counts["base_parameters"] else 0.0
    return counts


def caption_conditions(curated: dict, source_model, dataset: DatasetParams) -> dict:
    """A text-to-image model's training conditions: its frozen text encoder's
    hidden states of each image's caption (metadata.jsonl, else
    ``datasets.<name>.instance_prompt``), encoded once per run (the captions
    are in the checkpoint key: finetune fingerprints the conditions)."""
    text = text_conditioning_of(source_model)
    if text is None:
        raise ValueError(f"datasets.{dataset.name}: captions condition a text-to-image source model only")
    names = list(curated["meta"]["names"])
    found = {n: c for n, c in zip(names, curated["meta"].get("captions") or []) if c is not None}
    captions = captions_for(names, found, dataset.instance_prompt, f"datasets.{dataset.name}.images")
    return {"embeddings": text.encode(captions), "meta": {"captions": captions, "n": len(captions)}}


def embed_conditions(curated: dict, clip, method: MethodParams, dataset: DatasetParams) -> dict:
    """ANL's c = phi(x) for every training image, computed once per (images,
    CLIP weights) and cached on disk (Eq. 7)."""
    clip_id = getattr(clip, "weights_label", type(clip).__name__)
    cache = Path(method.condition.embeddings_cache) / f"{dataset.name}.npy"
    emb = cached_embeddings(clip.encode_images, curated["images"].numpy(), cache, key=clip_id)
    return {"embeddings": torch.from_numpy(emb), "meta": {"clip": clip_id, "n": int(emb.shape[0])}}
