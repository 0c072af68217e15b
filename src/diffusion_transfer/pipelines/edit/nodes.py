"""The edit stage: text-guided editing with Asyrp (SDFT section 4.3, Table 2).

``edit_<method>_<dataset>`` is a pipeline of its own rather than a stage of
every ``<method>_<dataset>`` run: it trains one f_t per prompt (5 prompts x
epochs x images x steps, each step three UNet calls), far more than the
translate stage, on an already fine-tuned model, so it runs on demand after
the method run without re-running or lengthening it. Its nodes live in the
method run's namespace, so ``finetuned_model`` is that run's model (plain
or adapted: A3FT, ANL, TAN; ANL's conditional model takes the CLIP embedding
of the image being edited as its condition).

Nodes: pick the edit inputs from the target dataset (``<dataset>_reference``:
the first ``n_train`` of a seeded permutation train f_t, the next ``n_test``
are edited); train f_t per prompt; edit; evaluate (S_dir with the run's
evaluation CLIP, labelled; ArcFace ID where weights are given and the data
are faces; FaceWorld edit success and preservation); one grid per prompt
(the inputs, then their edits).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffusion_transfer.core.data.contact_sheet import labelled_rows
from diffusion_transfer.core.data.images import to_tensor, to_uint8
from diffusion_transfer.core.editing import (
    ImplicitFunction,
    edit_many,
    invert_images,
    text_direction,
    timestep_at,
    train_asyrp,
)
from diffusion_transfer.core.methods.anl import image_conditions
from diffusion_transfer.core.metrics import attributes as attr_metrics
from diffusion_transfer.core.metrics.editing import directional_similarity, edit_success, prompt_attribute
from diffusion_transfer.core.metrics.identity import IdentitySimilarity
from diffusion_transfer.core.provenance import environment_record
from diffusion_transfer.core.world.classifier import predict_attributes
from diffusion_transfer.project.resolved import ResolvedDataset
from diffusion_transfer.project.schema_editing import EditingParams
from diffusion_transfer.project.schema import EvaluationParams, InvalidParametersError, ScheduleParams
from diffusion_transfer.pipelines.model_space import pixel_size
from diffusion_transfer.pipelines.schedule import model_schedule
from diffusion_transfer.pipelines.shortfall import KEY as SHORTFALLS, fewer_than_asked
from diffusion_transfer.pipelines.utils import inference_setup

logger = logging.getLogger(__name__)
WORLD_CLIP_NOTE = "world CLIP (FaceWorld demo stand-in for CLIP ViT-B/32)"


def select_edit_inputs(reference: dict, editing: EditingParams, dataset: ResolvedDataset | None = None) -> dict:
    """``n_train`` training and ``n_test`` test images, disjoint, from a
    seeded permutation of the target dataset (uint8, N x H x W x 3). A
    dataset smaller than ``n_train + n_test`` is split in the same
    proportion (the meta and the log say so) rather than failing after the
    method run; fewer than 2 images is an error."""
    p = _settings(editing, dataset)
    images = reference["images"]
    n = int(images.shape[0])
    n_train, n_test = p.n_train, p.n_test
    if n < 2:
        raise InvalidParametersError(f"Invalid parameters in 'editing': the edit stage needs at least 2 images "
                                     f"(1 to train f_t, 1 to edit); the dataset has {n}")
    reduced = n_train + n_test > n
    if reduced:
        n_train = min(n - 1, max(1, round(n * p.n_train / (p.n_train + p.n_test))))
        n_test = n - n_train
        logger.warning("editing.n_train / n_test: %d + %d requested but the dataset has %d images; using %d + %d",
                       p.n_train, p.n_test, n, n_train, n_test)
    order = np.random.default_rng(p.seed).permutation(n)
    train_idx, test_idx = order[:n_train], order[n_train:n_train + n_test]
    why = f"the dataset has {n} images, fewer than n_train + n_test = {p.n_train + p.n_test}; split in proportion"
    short = (fewer_than_asked("edit", "editing.n_train", p.n_train, n_train, "training images (f_t)", why)
             + fewer_than_asked("edit", "editing.n_test", p.n_test, n_test, "test images", why))
    return {"train": images[torch.from_numpy(train_idx)], "test": images[torch.from_numpy(test_idx)],
            "meta": {"seed": p.seed, "n_train": n_train, "n_test": n_test, "of": n, SHORTFALLS: short,
                     "requested": {"n_train": p.n_train, "n_test": p.n_test} if reduced else None,
                     "train_index": train_idx.tolist(), "test_index": test_idx.tolist()}}


def _settings(editing: EditingParams, dataset: ResolvedDataset | None) -> EditingParams:
    """The dataset's edit settings (``editing`` with its overrides, resolved
    before the run); ``editing`` itself for a call without a dataset."""
    return dataset.editing_params if dataset is not None else editing


def _conditions(model, condition_clip, images: torch.Tensor) -> torch.Tensor | None:
    """ANL's condition for editing image i: the CLIP embedding of image i."""
    adapter = getattr(model, "adapter", None)
    if adapter is None or not getattr(adapter, "needs_condition", False):
        return None
    if condition_clip is None:
        raise ValueError(f"the {model.kind} model is conditional: editing needs the condition CLIP")
    return image_conditions(condition_clip, images).float().cpu()


def _check_size(model, images: torch.Tensor) -> None:
    size = pixel_size(model)  # a latent model edits the latents of images at its autoencoder's size
    if images.shape[-1] != size or images.shape[-2] != size:
        raise ValueError(f"edit inputs are {tuple(images.shape[-2:])} but the model samples {size}x{size}")


def train_edit_directions(model, inputs: dict, clip, editing: EditingParams, schedule: ScheduleParams,
                          dataset: ResolvedDataset | None = None, condition_clip=None) -> dict:
    """One f_t per prompt (``core.editing.train_asyrp``); the weights go into
    one tensor file as ``<prompt>.<parameter>``, each prompt's config and loss
    history into its ``meta``."""
    p = _settings(editing, dataset)
    sched = model_schedule(model, schedule)
    device, _ = inference_setup()
    model.eval().to(device)
    clip = clip.to(device) if hasattr(clip, "to") else clip
    x = to_tensor(inputs["train"].numpy())
    _check_size(model, x)
    cond = _conditions(model, condition_clip, x)
    t_edit = timestep_at(sched, p.t_edit, "editing.t_edit")
    out: dict[str, Any] = {}
    meta: dict[str, Any] = {"t_edit": t_edit, "t_boost": timestep_at(sched, p.t_boost, "editing.t_boost"),
                            "clip": getattr(clip, "weights_label", type(clip).__name__), "prompts": {}}
    inverted: dict[tuple[int, int], torch.Tensor] = {}  # per inversion setting: every prompt shares it
    for name, prompt in p.prompts.items():
        config = p.asyrp_config(name, t_edit)
        key = (config.inversion_steps, config.batch_size)
        if key not in inverted:
            inverted[key] = invert_images(model, x, sched, config, cond)
        res = train_asyrp(model, sched, x, clip, prompt.source, prompt.target, config, conditions=cond,
                          desc=f"asyrp ({p.label(name)})", inverted=inverted[key])
        for k, v in res.f_t.state_dict().items():
            out[f"{name}.{k}"] = v.detach().cpu()
        meta["prompts"][name] = {**res.meta, "f_t": res.f_t.config, "history": res.history}
    out["meta"] = meta
    return out


def load_directions(directions: dict, prompt: str) -> ImplicitFunction:
    """Rebuild one prompt's f_t from :func:`train_edit_directions`' output."""
    info = directions["meta"]["prompts"].get(prompt)
    if info is None:
        raise ValueError(f"no trained f_t for prompt {prompt!r}; trained: {sorted(directions['meta']['prompts'])}")
    f_t = ImplicitFunction(**info["f_t"])
    f_t.load_state_dict({k[len(prompt) + 1:]: v for k, v in directions.items()
                         if isinstance(v, torch.Tensor) and k.startswith(f"{prompt}.")})
    return f_t


def apply_edits(model, directions: dict, inputs: dict, editing: EditingParams, schedule: ScheduleParams,
                dataset: ResolvedDataset | None = None, condition_clip=None) -> dict:
    """Edit the test images with every prompt's f_t; also the unedited DDIM
    reconstruction (same inversion, same boosting noise)."""
    p = _settings(editing, dataset)
    sched = model_schedule(model, schedule)
    device, _ = inference_setup()
    model.eval().to(device)
    x = to_tensor(inputs["test"].numpy())
    _check_size(model, x)
    cond = _conditions(model, condition_clip, x)
    kw = dict(inversion_steps=p.inversion_steps, steps=p.steps, t_edit=directions["meta"]["t_edit"],
              t_boost=directions["meta"]["t_boost"], scale=p.scale, batch_size=p.edit_batch_size, seed=p.seed,
              conditions=cond)
    out: dict[str, Any] = {"inputs": inputs["test"]}
    from tqdm.auto import tqdm

    # One inversion and one reconstruction per batch, shared by every prompt.
    n_batches = -(-x.shape[0] // p.edit_batch_size)
    with tqdm(total=n_batches * len(p.prompts), desc=f"edit {x.shape[0]} images", unit="batch") as bar:
        res = edit_many(model, {name: load_directions(directions, name) for name in p.prompts}, x, sched, **kw,
                        callback=lambda name: (bar.set_postfix(prompt=name), bar.update(1)))
    for name in p.prompts:
        out[name] = torch.from_numpy(to_uint8(res["edited"][name]))
    out["reconstructed"] = torch.from_numpy(to_uint8(res["reconstructed"]))
    out["meta"] = {"prompts": list(p.prompts), "labels": {k: p.label(k) for k in p.prompts},
                   "settings": {**{k: v for k, v in kw.items() if k != "conditions"},
                                "f_t": {"lr": p.lr, "epochs": p.epochs, "train_steps": p.train_steps,
                                        "n_train": int(inputs["train"].shape[0])}},
                   "texts": {k: {"source": v.source, "target": v.target} for k, v in p.prompts.items()},
                   SHORTFALLS: inputs.get("meta", {}).get(SHORTFALLS, [])}
    return out


def evaluate_edits(edits: dict, clip, attribute_classifier, evaluation: EvaluationParams, editing: EditingParams,
                   dataset: ResolvedDataset) -> dict:
    """Per prompt: S_dir (the run's evaluation CLIP, labelled), ID (ArcFace,
    input vs edit, where weights are given and the data are faces), and on
    FaceWorld edit success and preservation (n/a for a prompt without a
    FaceWorld attribute); plus the no-edit baseline: the unedited
    reconstruction's ID / retention, and per prompt its S_dir and success
    (DDIM inversion and regeneration alone can move an attribute, e.g.
    smooth away the wrinkles that make a FaceWorld face old)."""
    p = _settings(editing, dataset)
    device = inference_setup()[0]
    clip = clip.to(device) if hasattr(clip, "to") else clip
    x_in = to_tensor(edits["inputs"].numpy())
    identity = (IdentitySimilarity(evaluation.identity_weights, device=device, batch_size=evaluation.batch_size)
                if evaluation.identity_weights and dataset.faces else None)
    use_attrs = evaluation.attributes and dataset.attributes and attribute_classifier is not None
    if use_attrs:
        in_attrs = predict_attributes(attribute_classifier, edits["inputs"].numpy())
        rec_attrs = predict_attributes(attribute_classifier, edits["reconstructed"].numpy())
    x_rec = to_tensor(edits["reconstructed"].numpy())
    world = getattr(clip, "name", None) == "faceworld-clip"
    rows: dict[str, dict[str, Any]] = {}
    for name in edits["meta"]["prompts"]:
        prompt = p.prompts[name]
        y = to_tensor(edits[name].numpy())
        direction = text_direction(clip, prompt.source, prompt.target)
        row: dict[str, Any] = {"label": p.label(name),
                               "s_dir": float(directional_similarity(clip, x_in, y, direction).mean()),
                               # the unedited reconstruction scored the same way: what the edit adds
                               "reconstruction_s_dir": float(directional_similarity(clip, x_in, x_rec,
                                                                                    direction).mean())}
        if identity is not None:
            row["identity"] = float(identity(x_in, y).mean())
        if use_attrs:
            spec = prompt_attribute(name, {"attribute": prompt.attribute, "values": prompt.values}
                                    if prompt.attribute else None)
            out_attrs = predict_attributes(attribute_classifier, edits[name].numpy())
            row["face_rate"] = attr_metrics.face_rate(out_attrs)
            if spec is None:
                row.update(success=None, preservation=None, attribute="n/a (no FaceWorld attribute)")
            else:
                row.update(edit_success(in_attrs, out_attrs, *spec))
                row["reconstruction_success"] = edit_success(in_attrs, rec_attrs, *spec)["success"]
        rows[name] = row
    baseline: dict[str, Any] = {}
    if identity is not None:
        baseline["identity"] = float(identity(x_in, to_tensor(edits["reconstructed"].numpy())).mean())
    if use_attrs:
        try:
            baseline["retention"] = attr_metrics.attribute_retention(in_attrs, rec_attrs)["mean"]
        except ValueError:
            baseline["retention"] = None
    weights = {"s_dir": (WORLD_CLIP_NOTE + ": " if world else "") + getattr(clip, "weights_label", type(clip).__name__)}
    if identity is not None:
        weights["identity"] = identity.label
    if use_attrs:
        weights["attributes"] = "FaceWorld attribute classifier (evaluation only, never a training signal)"
    return {"dataset": dataset.name, "n_inputs": int(len(x_in)), "rows": rows, "reconstruction": baseline,
            "settings": edits["meta"]["settings"], "weights": weights,
            SHORTFALLS: edits["meta"].get(SHORTFALLS, []) + _grid_shortfall(p, len(x_in)),
            "environment": environment_record()}  # the edit's own commit and versions, not the model's


def _grid_shortfall(p: EditingParams, n_inputs: int) -> list[dict]:
    """The edit grids show at most the test images there are."""
    return fewer_than_asked("edit", "editing.grid_inputs", p.grid_inputs, min(p.grid_inputs, n_inputs),
                            "inputs in each edit grid", f"the edit stage has {n_inputs} test images")


def edit_grids(edits: dict, editing: EditingParams, dataset: ResolvedDataset | None = None,
               scale: int = 2) -> dict[str, Image.Image]:
    """One image per prompt: the first ``grid_inputs`` inputs, then their edits."""
    p = _settings(editing, dataset)
    k = min(p.grid_inputs, int(edits["inputs"].shape[0]))
    inputs = edits["inputs"].numpy()[:k]
    return {name: labelled_rows([("input", inputs), (p.label(name), edits[name].numpy()[:k])], scale)
             for name in edits["meta"]["prompts"]}
