"""Fine-tuning nodes of the method template: the run's configuration
(method defaults, dataset overrides, training defaults), the fine-tuning
itself (plain, conditional for ANL, guided for TAN) and ANL's training
conditions. Checkpoints are keyed by everything that changes the weights."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from diffusion_transfer.core.data.images import to_tensor
from diffusion_transfer.core.methods import build_method, expand_preset
from diffusion_transfer.core.methods.a3ft import attention_blocks
from diffusion_transfer.core.models.adapted import AdaptedUNet, parameter_counts
from diffusion_transfer.core.models.unet import build_unet
from diffusion_transfer.core.models.scheduler_config import attach_scheduler_config, scheduler_config_of
from diffusion_transfer.core.training import TrainConfig, train
from diffusion_transfer.project.schema import (
    DatasetParams,
    InvalidParametersError,
    MethodParams,
    TrainParams,
    parse,
)
from diffusion_transfer.pipelines.schedule import resolve_schedule
from diffusion_transfer.pipelines.training_samples import training_sampler


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
