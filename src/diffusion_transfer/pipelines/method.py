"""The method template: fine-tune -> sample -> evaluate -> report.

One template, instantiated per method x dataset with a Kedro namespace
(``sdft_aahq.finetuned_model`` ...), resolved by the catalog's dataset
factories. Shared inputs (the source model, the curated set, the noise bank,
the source model's samples) stay outside the namespace.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from kedro.pipeline import Pipeline, node

from diffusion_transfer.core.data.images import to_tensor, to_uint8
from diffusion_transfer.core.methods import build_method
from diffusion_transfer.core.models.unet import build_unet
from diffusion_transfer.core.sampling import make_noise_bank, model_eps_fn, sample_ddim, sample_ddpm
from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.training import TrainConfig, train
from diffusion_transfer.pipelines.params import (
    DatasetParams,
    MethodParams,
    SamplingParams,
    ScheduleParams,
    TrainParams,
    parse,
)
from diffusion_transfer.pipelines.report import build_report, evaluate


def resolve_run(method: dict, dataset: dict, train_defaults: dict) -> dict[str, Any]:
    """Merge method defaults, the dataset's per-method overrides and the
    training defaults into one validated run configuration."""
    m = parse(MethodParams, method, "methods")
    d = parse(DatasetParams, dataset, "datasets")
    hyper = {**m.hyperparameters(), **d.method_overrides.get(m.name, {})}
    t = parse(TrainParams, {**train_defaults, **d.train}, f"train (with datasets.{d.name}.train)")
    return {"run": f"{m.name}_{d.name}", "method": m.name, "dataset": d.name, "hyperparameters": hyper,
            "train": t.model_dump()}


def _fingerprint(tensors) -> bytes:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


def finetune(source_model, curated: dict, method: dict, dataset: dict, train_defaults: dict,
             schedule: dict, checkpoint_root: str):
    """Fine-tune (or, for ``scratch``, train from a fresh init) on the curated set."""
    run = resolve_run(method, dataset, train_defaults)
    sched_p = parse(ScheduleParams, schedule, "schedule")
    sched = make_schedule(**sched_p.model_dump())
    spec = build_method(run["method"], run["hyperparameters"], sched)
    config = TrainConfig(**run["train"])
    if spec.init == "random":
        torch.manual_seed(config.seed)
        student = build_unet(dict(source_model.config))
    else:  # a copy: the source model stays the untouched teacher / reference
        student = copy.deepcopy(source_model)
    teacher = source_model if spec.needs_teacher else None
    images = to_tensor(curated["images"].numpy())
    # Checkpoints are keyed by the configuration, the source weights and the
    # training images, so that any change starts a fresh run instead of
    # resuming a different one.
    key = hashlib.sha256(json.dumps({**run, "schedule": sched_p.model_dump()}, sort_keys=True).encode())
    key.update(_fingerprint(source_model.state_dict().values()))
    key.update(_fingerprint([curated["images"]]))
    key = key.hexdigest()[:12]
    ckpt_dir = Path(checkpoint_root) / run["run"] / key
    result = train(student, spec.loss_fn, images, config, teacher=teacher, checkpoint_dir=ckpt_dir,
                   desc=f"{run['run']}")
    model = result.ema_model if result.ema_model is not None else result.model
    history = {"run": run, "history": result.history, "resumed_from_step": result.resumed_from_step,
               "checkpoint_dir": str(ckpt_dir)}
    return model, history


def create_noise_bank(sampling: dict, source_model) -> dict:
    p = parse(SamplingParams, sampling, "sampling")
    size = int(source_model.config.sample_size)
    bank = make_noise_bank(p.n_samples, (3, size, size), seed=p.seed)
    return {"noise": bank, "meta": {"seed": p.seed, "n": p.n_samples}}


def sample(model, noise_bank: dict, sampling: dict, schedule: dict) -> dict:
    """Generate one image per noise in the bank (same noise for every model)."""
    p = parse(SamplingParams, sampling, "sampling")
    sched = make_schedule(**parse(ScheduleParams, schedule, "schedule").model_dump())
    model.eval()
    eps_fn = model_eps_fn(model)
    noise = noise_bank["noise"]
    out = []
    gen = torch.Generator().manual_seed(p.seed + 1)
    from tqdm.auto import tqdm

    with tqdm(total=len(noise), desc=f"sampling ({p.sampler}, {p.steps} steps)", unit="img") as bar:
        for i in range(0, len(noise), p.batch_size):
            x = noise[i : i + p.batch_size]
            if p.sampler == "ddim":
                x0 = sample_ddim(eps_fn, x, sched, steps=p.steps, eta=p.eta, generator=gen)
            else:
                x0 = sample_ddpm(eps_fn, x, sched, steps=p.steps, generator=gen)
            out.append(x0)
            bar.update(len(x))
    images = torch.cat(out)
    return {"images": torch.from_numpy(to_uint8(images)), "meta": {"sampler": p.sampler, "steps": p.steps,
                                                                   "eta": p.eta}}


def create_source_pipeline() -> Pipeline:
    """The source model's samples from the shared noise bank (one per project)."""
    return Pipeline(
        [
            node(create_noise_bank, ["params:sampling", "source_model"], "noise_bank", name="make_noise_bank",
                 tags=["sample"]),
            node(sample, ["source_model", "noise_bank", "params:sampling", "params:schedule"], "source_samples",
                 name="sample_source", tags=["sample"]),
        ]
    )


def create_method_pipeline(method: str, dataset: str) -> Pipeline:
    template = Pipeline(
        [
            node(finetune,
                 ["source_model", "curated", "params:method", "params:dataset", "params:train", "params:schedule",
                  "params:paths.checkpoints"],
                 ["finetuned_model", "training_history"], name="finetune", tags=["train"]),
            node(sample, ["finetuned_model", "noise_bank", "params:sampling", "params:schedule"], "target_samples",
                 name="sample_finetuned", tags=["sample"]),
            node(evaluate,
                 ["source_samples", "target_samples", "curated", "reference", "evaluation_clip",
                  "attribute_classifier", "params:evaluation", "params:dataset"],
                 "metrics", name="evaluate", tags=["evaluate"]),
            node(build_report,
                 ["metrics", "training_history", "curation_summary", "source_samples", "target_samples"],
                 ["report", "sample_grid", "loss_curve"], name="report", tags=["report"]),
        ]
    )
    shared = {"source_model", "noise_bank", "source_samples", "evaluation_clip", "attribute_classifier"}
    return Pipeline(
        template,
        namespace=f"{method}_{dataset}",
        inputs={**{s: s for s in shared}, "curated": f"{dataset}_curated", "reference": f"{dataset}_reference",
                "curation_summary": f"{dataset}_curation_summary"},
        parameters={
            "params:method": f"params:methods.{method}",
            "params:dataset": f"params:datasets.{dataset}",
            "params:train": "params:train",
            "params:schedule": "params:schedule",
            "params:sampling": "params:sampling",
            "params:evaluation": "params:evaluation",
            "params:paths.checkpoints": "params:paths.checkpoints",
        },
    )
