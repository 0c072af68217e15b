"""The pre-run check: before any node runs, every file the pipeline reads
from outside (datasets, model weights, metric weights) must be there.

Each missing one is listed with where to put it and where it comes from, in
one message, so a paper-scale run never stops an hour in on the first
missing file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import torch

from diffusion_transfer.core.data.labels import read_labels
from diffusion_transfer.core.metrics.lpips_metric import smallest_input_size
from diffusion_transfer.core.models.latent import autoencoder_downscale
from diffusion_transfer.core.data.captions import CAPTIONS_FILE
from diffusion_transfer.core.methods.registry import METHODS, build_method, text_to_image_methods
from diffusion_transfer.core.models.folder_check import (config_class_labels, is_text_to_image_model, meta_unet,
                                                          unet_folder_problems, unsupported_parts)
from diffusion_transfer.core.models.lora import adaptable_names, base_unet, scope_problems, target_problems
from diffusion_transfer.core.models.text_to_image import TextConditioning, attach_text_conditioning
from diffusion_transfer.core.schedule import NoiseSchedule
from diffusion_transfer.core.weights import missing_weights
from diffusion_transfer.core.models.scheduler_config import scheduler_config_problems
from diffusion_transfer.pipelines.schedule import PROJECT_DEFAULT, resolve_schedule
from diffusion_transfer.project.declared import declarations, is_catalog_name
from diffusion_transfer.project.resolved import resolve_run
from diffusion_transfer.project.schema import InvalidParametersError, ScheduleParams, parse, translation_for

#: Any schedule builds a method for the scope check: the schedule only enters its loss.
_ANY_SCHEDULE = NoiseSchedule(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))

_METRIC_WEIGHTS = {
    "inception_path": "clean-fid's TorchScript Inception-v3 (inception-2015-12-05.pt), for FID/KID",
    "lpips_backbone_weights": "torchvision's AlexNet ImageNet weights (alexnet-owt-7be5be79.pth), LPIPS's backbone",
    "identity_weights": "the ArcFace IR-SE50 weights (model_ir_se50.pth, from pSp's release), for the ID metric",
}


class MissingInputsError(click.ClickException, RuntimeError):
    """Raised before any compute, listing every missing input. A
    ``ClickException``, so ``kedro run`` prints the list, not a traceback."""


def find_missing(pipeline, catalog, params: dict[str, Any]) -> list[str]:
    """One line per missing external input of ``pipeline``: datasets whose
    Kedro dataset knows how to say what is missing (``missing()``), and the
    metric weights configured by path or release id under ``evaluation``."""
    problems = []
    for name in sorted(pipeline.inputs()):
        if name.startswith("params:") or name == "parameters":
            continue
        dataset = catalog.get(name)
        if dataset is None:
            problems.append(f"{name}: no catalog entry of that name. Add it to catalog.yml, or for a dataset's "
                            "images set 'datasets.<name>.images' to a folder (a path with a '/'), for a source "
                            "domain 'sources.<name>.model' / 'images' to a folder or Hub id")
            continue
        check = getattr(dataset, "missing", None)
        why = check() if callable(check) else None
        if why:
            problems.append(f"{name}: {why}")
    evaluating = [n for n in pipeline.nodes if "params:evaluation" in n.inputs]
    evaluation = params.get("evaluation") or {}
    if evaluating:
        for key, what in _METRIC_WEIGHTS.items():
            if key == "identity_weights" and not _evaluates_faces(evaluating, params):
                continue  # ArcFace only scores face datasets (LSUN Church targets never load it)
            why = missing_weights(evaluation.get(key), what)
            if why:
                problems.append(f"evaluation.{key}: {why}")
        if _scores_inception(evaluating, params) and evaluation.get("inception_score_weights"):
            why = missing_weights(evaluation["inception_score_weights"], "torch-fidelity's Inception-v3 "
                                  "(weights-inception-2015-12-05-6726825d.pth), for the Inception Score")
            if why:
                problems.append(f"evaluation.inception_score_weights: {why}")
    return problems + _augmentation_inputs(pipeline, catalog, params)


def _augmentation_inputs(pipeline, catalog, params: dict[str, Any]) -> list[str]:
    """ANL's augmentation stage (``anl_augment_<d>``): the classifier's weights
    file, the labels file (read: some line must have every label key) and the test folder."""
    decl = declarations(params)
    names = {i.split(".", 1)[1] for n in pipeline.nodes if "augment" in n.tags for i in n.inputs
             if i.startswith("params:datasets.")}
    problems = []
    for name in sorted(names & set(decl.datasets)):
        p, where = decl.datasets[name].params.augmentation, f"datasets.{name}.augmentation"
        if p is None:
            problems.append(f"{where}: the block is missing; declare it (conf/base/parameters_augment.yml)")
            continue
        why = missing_weights(p.classifier.weights, f"torchvision's {p.classifier.arch} weights "
                              "(a state_dict file, as download.pytorch.org/models serves them)")
        if why:
            problems.append(f"{where}.classifier.weights: {why}")
        raw = catalog.get(decl.datasets[name].raw_entry)
        folders = [(Path(raw.path), getattr(raw, "rendered", False))] if hasattr(raw, "path") else []
        if p.test_images is not None:
            if not Path(p.test_images).is_dir():
                problems.append(f"{where}.test_images: {p.test_images} is not a folder; put the held-out labelled "
                                "test images there, with their labels file")
            else:
                folders.append((Path(p.test_images), False))
        problems += [line for folder, rendered in folders for line in _labels_file(folder, rendered, p, where)]
    return problems


def _labels_file(folder: Path, rendered: bool, p, where: str) -> list[str]:
    path = folder / p.labels
    if not path.is_file():  # a FaceWorld folder is written (with its labels) when the run loads it
        return [] if rendered or not folder.is_dir() else [
            f"{where}.labels: {path} does not exist; put the JSONL labels there ({{\"file\": ..., <key>: ...}} a line)"]
    if not read_labels(path, p.label_keys)[0]:
        return [f"{where}.label_keys: no line of {path} has a 'file' and every key of {p.label_keys}"]
    return []


def _scores_inception(nodes, params: dict[str, Any]) -> bool:
    """A dataset of the run scores IS: its ``inception_score``, or ``evaluation.inception_score`` when null."""
    datasets, default = params.get("datasets") or {}, (params.get("evaluation") or {}).get("inception_score", False)
    names = {i.split(".", 1)[1] for n in nodes for i in n.inputs if i.startswith("params:datasets.")}
    return any((lambda v: default if v is None else v)((datasets.get(name) or {}).get("inception_score"))
               for name in names)


def _evaluates_faces(nodes, params: dict[str, Any]) -> bool:
    datasets = params.get("datasets") or {}
    names = {i.split(".", 1)[1] for n in nodes for i in n.inputs if i.startswith("params:datasets.")}
    return any((datasets.get(name) or {}).get("faces", False) for name in names)  # DatasetParams.faces


def check_inputs(pipeline, catalog, params: dict[str, Any]) -> None:
    problems = find_missing(pipeline, catalog, params)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise MissingInputsError(
            f"{len(problems)} input(s) of this run are missing; nothing was computed. Put each file or folder "
            f"where it says (README, 'Running at paper scale'), then run again:\n{lines}")


def check_models(pipeline, catalog, params: dict[str, Any]) -> None:
    """Before any compute: each source model of the run loads (config.json
    parses, the weights are whole and match it), has a schedule and
    prediction type this project honours, a supported channel count, and a
    square ``sample_size`` that every stage of the run accepts and that
    agrees with any explicit ``curation.resolution`` and translation factor.
    Read from the model folders' JSON files and weight headers; nothing is loaded."""
    decl = declarations(params)
    used = {i.split(".", 1)[1] for n in pipeline.nodes for i in n.inputs if i.startswith("params:datasets.")}
    problems: list[str] = []
    for name in sorted(used & set(decl.datasets)):
        entry = decl.datasets[name].source.entries["source_model"]
        dataset = catalog.get(entry)
        if hasattr(dataset, "configs"):
            problems += _model_problems(pipeline, dataset, entry, decl.datasets[name], params)
    problems = list(dict.fromkeys(problems))  # datasets sharing a source model: said once
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise InvalidParametersError(f"{len(problems)} problem(s) with the run's models; nothing was computed:\n{lines}")


def _model_problems(pipeline, dataset, entry: str, target, params: dict[str, Any]) -> list[str]:
    where = f"the source model '{entry}' ({getattr(dataset, '_path', entry)})"
    # its folder, or a Hub id's snapshot in the local cache, checked like a folder (absent: find_missing says so)
    path = (dataset.local_folder() if hasattr(dataset, "local_folder") else None) or getattr(dataset, "_path", entry)
    try:
        unet, scheduler = dataset.configs()
    except ValueError as err:
        return [f"{where}: {err}"]
    if Path(str(path)).is_dir() and (parts := unsupported_parts(path)):
        return [f"{where}: {'; '.join(parts)}. This project trains and samples UNet2DModel models, in pixel "
                "space or in the latent space of a VQModel / AutoencoderKL, unconditional or with a class "
                "embedding, and text-to-image models in the Stable Diffusion layout (text_encoder/ and "
                "tokenizer/ beside vae/ and a UNet2DConditionModel in unet/) (conf/README.md, 'Which models "
                "work'); training this one without those parts would be silently wrong. Set "
                f"sources.{target.source.name}.model to a supported model"]
    problems = [f"{where}: {p}" for p in (unet_folder_problems(path) if Path(str(path)).is_dir() else [])]
    text_to_image = Path(str(path)).is_dir() and is_text_to_image_model(path)
    if text_to_image:
        problems += (_text_to_image_problems(pipeline, where) + _caption_problems(target)
                     + _class_prompt_problems(pipeline, target, params))
    problems += _schedule_problems(dataset, scheduler, params, where)
    try:
        autoencoder = dataset.autoencoder_config() if hasattr(dataset, "autoencoder_config") else None
    except ValueError as err:
        problems.append(str(err))
    if unet is None or problems:
        return problems
    channels = int(autoencoder["latent_channels"]) if autoencoder else 3
    if unet.get("in_channels", 3) != channels or unet.get("out_channels", 3) not in (channels, 2 * channels):
        space = f"the latent channels of its autoencoder ({channels})" if autoencoder else "RGB (3)"
        problems.append(f"{where}: in_channels {unet.get('in_channels')} / out_channels {unet.get('out_channels')}"
                        f"; its UNet must take {space} and predict as many channels (twice with a learned variance)")
    scale = autoencoder_downscale(autoencoder) if autoencoder else 1
    return (problems + _size_problems(pipeline, unet, where, target, params, scale)
            + _label_problems(unet, dataset, target) + _adapter_problems(pipeline, unet, where, target, params, text_to_image))


def _methods_of(pipeline) -> set[str]:
    """The methods whose runs the pipeline holds (the ``params:methods.<m>`` its nodes read)."""
    return {i.split(".", 1)[1] for n in pipeline.nodes for i in n.inputs if i.startswith("params:methods.")}


def _text_to_image_problems(pipeline, where: str) -> list[str]:
    """Each method of the run that does not train a text-to-image model yet (the method registry says which do)."""
    used = sorted(_methods_of(pipeline))
    supported = text_to_image_methods()
    return [f"methods.{m}: {where} is a text-to-image model (Stable Diffusion layout: a UNet2DConditionModel "
            f"with its text encoder and tokenizer), which {m} does not train yet; run one of "
            f"{', '.join(f'{s}_<dataset>' for s in supported)} (full, or LoRA with train.adapter)"
            for m in used if m not in supported]


def _class_prompt_problems(pipeline, target, params: dict[str, Any]) -> list[str]:
    """Each run of the pipeline that samples class images (DreamBooth) without a class prompt."""
    methods = params.get("methods") or {}
    used = _methods_of(pipeline)
    d = target.params.name
    return [f"methods.{m}.class_prompt is not set (nor datasets.{d}.method_overrides.{m}.class_prompt): {m} "
            "samples its class images from the source model with the class prompt; set it to the class of the "
            "training images, e.g. 'a photo of dog' for a dog's photos"
            for m in sorted(used & set(methods)) if METHODS[m].class_images
            and {**methods[m], **target.params.method_overrides.get(m, {})}.get("class_prompt") is None]


def _caption_problems(target) -> list[str]:
    """A text-to-image dataset given as a folder has captions: its metadata.jsonl, or an instance prompt."""
    d = target.params
    if d.instance_prompt is not None or d.images is None or is_catalog_name(d.images):
        return []
    folder = Path(d.images).expanduser()
    if not folder.is_dir() or (folder / CAPTIONS_FILE).is_file():
        return []  # a missing folder is named by the input check
    return [f"datasets.{d.name}.images ({d.images}) has no {CAPTIONS_FILE} and datasets.{d.name}.instance_prompt "
            f"is not set: a text-to-image source trains on captions. Write one line per image "
            f'({{"file_name": "img_000.png", "text": "a caption"}}) to {folder / CAPTIONS_FILE}, or set the '
            "instance prompt (one prompt for every image)"]


def _adapter_problems(pipeline, unet: dict[str, Any], where: str, target, params: dict[str, Any],
                      text_to_image: bool) -> list[str]:
    """Each run of the pipeline on this dataset whose ``train.adapter.target_modules``
    do not work on the source model, built from its config on the meta device
    (a model diffusers cannot build from its config is checked by the node, on the loaded model)."""
    used = _methods_of(pipeline)
    methods = params.get("methods") or {}
    runs = [resolve_run({"name": m, **methods[m]}, target.params, params.get("train") or {})
            for m in sorted(used & set(methods))]
    runs = [run for run in runs if run.adapter is not None]
    if not runs:
        return []
    try:
        model = meta_unet(unet)
    except Exception:  # noqa: BLE001 - diffusers rejects the config: unet_folder_problems names it
        return []
    problems = []
    for run in runs:
        found = target_problems(model, run.adapter.target_modules)
        if found:
            problems.append(f"train.adapter.target_modules (run {run.name}) on {where}: {'; '.join(found)}. Set it "
                            f"to layers LoRA can adapt in this model: {', '.join(adaptable_names(model))}")
        else:
            problems += _scope_problems(run, unet, where, text_to_image)
    return problems


def _scope_problems(run, unet: dict[str, Any], where: str, text_to_image: bool) -> list[str]:
    """A method that lets LoRA into its own layers only (``attn`` on a text-to-image
    model: the cross-attention it trains) refuses targets outside them: said
    here, on the model built on the meta device, rather than when training starts."""
    try:
        method = build_method(run.method, dict(run.hyperparameters), _ANY_SCHEDULE)
        if method.prepare is None or method.conditional:
            return []
        model = meta_unet(unet)
        if text_to_image:  # methods tell a text-to-image UNet by its text encoder: a stand-in, never called here
            attach_text_conditioning(model, TextConditioning(torch.nn.Identity(), None, {}))
        scoped = method.prepare(model)
    except Exception:  # noqa: BLE001 - a method the meta model cannot take: the node checks it on the real one
        return []
    return scope_problems(base_unet(scoped), run.adapter, f"train.adapter.target_modules (run {run.name}) on {where}")


def _schedule_problems(dataset, scheduler: dict[str, Any] | None, params: dict[str, Any], where: str) -> list[str]:
    """The model's schedule with the ``schedule`` overrides: numerically
    possible (core's scheduler_config_problems), then honoured by the code."""
    try:
        overrides = parse(ScheduleParams, params.get("schedule"), "schedule").model_dump(exclude_none=True)
        found = dataset.scheduler_file() if hasattr(dataset, "scheduler_file") else None
        source = found or "the project default schedule (the model folder has no scheduler_config.json)"
        bad = scheduler_config_problems(scheduler if scheduler is not None else PROJECT_DEFAULT, source, overrides)
        if bad:
            return [f"{where}: {p}" for p in bad]
        resolve_schedule(None, params.get("schedule"), config=scheduler, where=where)
    except (InvalidParametersError, ValueError) as err:
        return [str(getattr(err, "message", err))]
    return []


def _label_problems(unet: dict[str, Any], dataset, target) -> list[str]:
    """A class-conditional model needs a label for the dataset and for the source's own samples."""
    n = config_class_labels(unet)
    labels = {f"datasets.{target.name}.class_label": target.params.class_label,
              f"sources.{target.source.name}.class_label": getattr(dataset, "class_label", None)}
    if not n:
        return [f"{key} is {value!r} but the source model has no class embedding: remove it"
                for key, value in labels.items() if value is not None]
    problems = [f"{key} is {value}: the source model has {n} class embeddings (0..{n - 1}, the last the null "
                "label); use one of them or 'unconditional'"
                for key, value in labels.items() if isinstance(value, int) and value >= n]
    source_label = labels[f"sources.{target.source.name}.class_label"]
    if source_label is None:
        problems.append(f"sources.{target.source.name}.class_label is not set but the source model is "
                        f"class-conditional ({n} class embeddings): set the label its own samples are drawn with "
                        "(an index, or 'unconditional' for the null label)")
    return problems


def _size_problems(pipeline, unet: dict[str, Any], where: str, target, params: dict[str, Any],
                   scale: int = 1) -> list[str]:
    """``sample_size`` against what each stage of the run needs; a latent
    model makes images ``scale`` times its sample_size."""
    size, name = unet.get("sample_size"), target.name
    if isinstance(size, list):
        if len(set(size)) != 1:
            return [f"{where}: sample_size {size} is not square; this project trains and samples square images"]
        size = size[0]
    if not isinstance(size, int) or size < 1:
        return [f"{where}: config.json has no usable sample_size ({size!r}); set it to the image side it was trained at"]
    problems = []
    halvings = len(unet.get("down_block_types") or [None] * 4) - 1
    if size % 2 ** halvings:
        problems.append(f"{where}: sample_size {size} is not a multiple of {2 ** halvings}, which its "
                        f"{halvings + 1} down blocks need (each but the last halves the image)")
    pixels, made = size * scale, f"sample_size {size}" + (f" (latent; {size * scale} px images)" if scale > 1 else "")
    wanted = target.params.curation.resolution
    if wanted is not None and wanted != pixels:
        problems.append(f"datasets.{name}.curation.resolution is {wanted} but {where} has {made}: "
                        f"images are prepared at the model's resolution; remove the parameter or set it to {pixels}")
    stages = {i for n in pipeline.nodes for i in n.inputs}
    if "params:evaluation" in stages and not target.source.text_to_image:  # a text-to-image run has no LPIPS
        net = (params.get("evaluation") or {}).get("lpips_net", "alex")
        smallest = smallest_input_size(net)
        if pixels < smallest:
            others = {n: smallest_input_size(n) for n in ("alex", "vgg", "squeeze") if n != net}
            fits = [f"{n} ({s} px)" for n, s in others.items() if s <= pixels]
            problems.append(
                f"evaluation.lpips_net: LPIPS '{net}' needs images of at least {smallest}x{smallest} but {where} has "
                f"{made}, so the evaluation would fail after training. "
                + (f"Set evaluation.lpips_net to {' or '.join(fits)}." if fits else
                   f"Use a model of sample_size >= {min(others.values())}."))
    if "params:translation" in stages and "translation" in params:
        try:
            translation = translation_for(params["translation"], target.params)
            translation.check_factors(size)
        except InvalidParametersError as err:
            problems.append(str(err.message))
        else:
            if not translation.enabled():
                problems.append("Invalid parameters in 'translation': every method is disabled; set "
                                "translation.<sdedit|ilvr|egsde|ddib>.enabled: true for one at least")
    return problems
