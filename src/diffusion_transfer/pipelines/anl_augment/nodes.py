"""``anl_augment_<dataset>``: ANL's semi-supervised augmentation experiment
(Transferring Pretrained DPMs, Table 2 and section 4.1) on the model
``anl_<dataset>`` wrote.

``labels_per_class`` labelled training images per class are drawn from the
dataset's training set (its curated images); the fine-tuned ANL model
generates ``per_labelled`` images from each, conditioned on its masked CLIP
embedding (ANL 3.3, ``methods.anl.condition.mask_rate``) and labelled with its
class; a torchvision classifier is trained by ERM on the labelled images
alone and with the generated ones, ``seeds`` times each, and scored on the
test images (the dataset's images outside its training set, or
``test_images``). The paper's SSL columns (Pseudo Label, UDA, FixMatch, Self
Tuning, FlexMatch) are not run: see :data:`SSL_NOT_RUN`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffusion_transfer.core.data.contact_sheet import labelled_rows
from diffusion_transfer.core.data.images import ImageFolderError, ingest_images, to_tensor, to_uint8
from diffusion_transfer.core.data.labels import labelled_split, per_condition, read_labels
from diffusion_transfer.core.methods.anl import image_conditions, masked_images
from diffusion_transfer.core.models.image_classifier import build_image_classifier
from diffusion_transfer.core.sampling import make_noise_bank
from diffusion_transfer.core.training.erm import accuracy, mean_std, train_erm
from diffusion_transfer.core.weights import WeightsUnavailable, resolve_weights
from diffusion_transfer.datasets.folders import ImageFolder
from diffusion_transfer.pipelines.generation import generate
from diffusion_transfer.pipelines.model_space import model_input_shape
from diffusion_transfer.pipelines.schedule import model_schedule
from diffusion_transfer.pipelines.shortfall import KEY as SHORTFALLS, fewer_than_asked, shortfall_lines
from diffusion_transfer.project.schema import (  # AugmentationParams: schema_augment's, re-exported
    AugmentationParams,
    DatasetParams,
    InvalidParametersError,
    MethodParams,
    SamplingParams,
    ScheduleParams,
)

#: Why ANL Table 2's SSL columns are not run (docs/METHODS.md, "ANL's augmentation experiment").
SSL_NOT_RUN = (
    "Pseudo Label, UDA, FixMatch, Self Tuning and FlexMatch (ANL Table 2's other columns) are not run: ANL ran "
    "them with TLlib (Jiang et al. 2022), which is not on PyPI; USB (semilearn 0.3.2, the FlexMatch authors' "
    "library) needs torchaudio, wandb, aim, transformers and about 20 more packages, and its Trainer and "
    "AlgorithmBase hard-code CUDA (.cuda() in process_batch, Trainer.__init__ and predict, torch.cuda.Event in "
    "its timer), so it cannot run on CPU machines or in the tests. Only ERM is run.")
ROWS = {"labelled": "labelled only (ERM)", "augmented": "+ generated (ERM)"}


def _params(dataset: DatasetParams) -> tuple[AugmentationParams, str]:
    where = f"datasets.{dataset.name}.augmentation"
    if dataset.augmentation is None:
        raise InvalidParametersError(f"Invalid parameters in '{where}': the block is missing; declare it "
                                     "(conf/base/parameters_augment.yml has FaceWorld's) to run anl_augment")
    return dataset.augmentation, where


def _labels(folder: Path, p: AugmentationParams, where: str) -> tuple[dict, list]:
    path = folder / p.labels
    if not path.is_file():
        raise InvalidParametersError(f"Invalid parameters in '{where}.labels': {path} does not exist; put the "
                                     "JSONL labels there (one {\"file\": ..., <label key>: ...} a line)")
    labels, problems = read_labels(path, p.label_keys)
    if not labels:
        raise InvalidParametersError(f"Invalid parameters in '{where}.label_keys': no line of {path} has a 'file' "
                                     f"and every key of {p.label_keys} ({len(problems)} lines unusable)")
    return labels, problems


def _test_pool(curated: dict, reference: dict, dataset: DatasetParams, p: AugmentationParams, where: str):
    """Names, uint8 images and labels of the test candidates; the files skipped."""
    if p.test_images is None:  # the dataset's images outside its training set (anl_conditions' unseen pool)
        seen = set(curated["meta"].get("names", []))
        names = list(reference["meta"].get("names", []))
        keep = [i for i, n in enumerate(names) if n not in seen]
        return [names[i] for i in keep], reference["images"].numpy()[keep], {}, []
    try:
        ingest = ingest_images(p.test_images, resolution=int(curated["images"].shape[1]),
                               min_size=dataset.curation.min_size)
    except (ImageFolderError, FileNotFoundError, NotADirectoryError) as err:
        raise InvalidParametersError(f"Invalid parameters in '{where}.test_images': {err}") from None
    labels, problems = _labels(Path(p.test_images), p, where)
    names = [f"test/{n}" for n in ingest.names]  # never confused with a training image of the same name
    return names, ingest.images, {f"test/{k}": v for k, v in labels.items()}, list(ingest.skipped) + problems


def augment_split(folder: ImageFolder, curated: dict, reference: dict, dataset: DatasetParams) -> dict:
    """The labelled training images (``labels_per_class`` a class, seeded) and
    the test images, uint8 with their class indices; what was left out in ``meta``."""
    p, where = _params(dataset)
    labels, problems = _labels(Path(folder.root), p, where)
    training = list(curated["meta"].get("names", []))
    pool, pool_images, test_labels, test_problems = _test_pool(curated, reference, dataset, p, where)
    split = labelled_split(training, pool, {**labels, **test_labels}, p.labels_per_class, p.n_test, p.split_seed)
    if len(split.classes) < 2:
        raise InvalidParametersError(
            f"Invalid parameters in '{where}.labels_per_class': {len(split.classes)} class(es) of "
            f"{p.label_keys} have {p.labels_per_class} labelled training images (of {len(training)}); a classifier "
            "needs two at least: lower labels_per_class or choose other label_keys")
    if not split.test:
        raise InvalidParametersError(
            f"Invalid parameters in '{where}.test_images': no labelled test image of a kept class (the dataset has "
            f"{len(pool)} images outside its training set); set test_images to a folder of held-out labelled images")
    at = {n: i for i, n in enumerate(training)}
    at_pool = {n: i for i, n in enumerate(pool)}
    return {
        "labelled": curated["images"][[at[n] for n in split.labelled]],
        "labelled_labels": torch.tensor(split.labelled_labels, dtype=torch.int64),
        "test": torch.from_numpy(np.ascontiguousarray(pool_images[[at_pool[n] for n in split.test]])),
        "test_labels": torch.tensor(split.test_labels, dtype=torch.int64),
        "meta": {**split.record(), "dataset": dataset.name, "label_keys": p.label_keys,
                 "label_problems": [f"{w}: {why}" for w, why in problems + test_problems],
                 "test_source": p.test_images or "the dataset's images outside its training set",
                 SHORTFALLS: fewer_than_asked(
                     f"anl_augment_{dataset.name}", f"{where}.n_test", p.n_test, len(split.test), "test images",
                     f"{len(split.test)} of the {len(pool)} test-pool images have a label of a kept class")},
    }


def augment_generate(model, data: dict, condition_clip, method: MethodParams, dataset: DatasetParams,
                     sampling: SamplingParams, schedule: ScheduleParams) -> tuple[dict, Image.Image]:
    """``per_labelled`` images of the fine-tuned model per labelled image, each
    conditioned on that image's CLIP embedding with a random rectangle of side
    ``mask_rate`` masked (ANL 3.3), labelled like it; and a contact sheet."""
    p, _ = _params(dataset)
    condition, labels = per_condition(data["labelled_labels"].tolist(), p.per_labelled)
    images = to_tensor(data["labelled"].numpy())
    rate, gen = method.condition.mask_rate, torch.Generator().manual_seed(sampling.seed + 2)
    embeddings = []
    for i in range(0, len(condition), sampling.batch_size):  # CLIP in batches (10 per labelled image)
        masked = masked_images(images[condition[i:i + sampling.batch_size]], rate, gen)
        embeddings.append(image_conditions(condition_clip, masked))
    noise = make_noise_bank(len(condition), model_input_shape(model), seed=sampling.seed + 3)
    generated = to_uint8(generate(model, noise, sampling, model_schedule(model, schedule), torch.cat(embeddings)))
    meta = {"per_labelled": p.per_labelled, "mask_rate": rate, "sampler": f"{sampling.sampler}, {sampling.steps} steps",
            "model": f"{method.name}_{dataset.name}", "noise_seed": sampling.seed + 3,
            "condition_clip": getattr(condition_clip, "weights_label", "CLIP")}
    out = {"images": torch.from_numpy(generated), "labels": torch.from_numpy(labels),
           "condition": torch.from_numpy(condition), "meta": meta}
    return out, _sheet(data, generated, p)


def _sheet(data: dict, generated: np.ndarray, p: AugmentationParams) -> Image.Image:
    """One row per labelled image (the first of each class first): it, then its generated images."""
    labels, classes = data["labelled_labels"].tolist(), data["meta"]["classes"]
    firsts = [labels.index(k) for k in sorted(set(labels))]
    order = (firsts + [i for i in range(len(labels)) if i not in set(firsts)])[:p.sheet_rows]
    rows = []
    for i in order:
        made = generated[i * p.per_labelled:(i + 1) * p.per_labelled]
        rows.append((classes[labels[i]], np.concatenate([data["labelled"][i:i + 1].numpy(), made])))
    return labelled_rows(rows)


def augment_classify(data: dict, generated: dict, dataset: DatasetParams) -> dict[str, Any]:
    """Test accuracy of ERM on the labelled images, and on them with the
    generated ones: the same classifier, steps, batch, lr and flips, ``seeds`` replicates each."""
    p, where = _params(dataset)
    c = p.classifier
    try:
        weights = resolve_weights(c.weights, f"torchvision's {c.arch} weights") if c.weights else None
    except WeightsUnavailable as err:  # it says where the file comes from
        raise InvalidParametersError(f"Invalid parameters in '{where}.classifier.weights': {err}") from None
    labelled, labelled_y = to_tensor(data["labelled"].numpy()), data["labelled_labels"]
    sets = {"labelled": (labelled, labelled_y),
            "augmented": (torch.cat([labelled, to_tensor(generated["images"].numpy())]),
                          torch.cat([labelled_y, generated["labels"].long()]))}
    test, test_y = to_tensor(data["test"].numpy()), data["test_labels"]
    n_classes = len(data["meta"]["classes"])
    rows = []
    for key, (images, y) in sets.items():
        accs = []
        for seed in range(p.seeds):
            torch.manual_seed(seed)  # the classifier's initial weights
            try:
                model = build_image_classifier(c.arch, n_classes, weights)
            except ValueError as err:
                raise InvalidParametersError(f"Invalid parameters in '{where}.classifier.weights': {err}") from None
            model = train_erm(model, images, y, c.train_config(seed), desc=f"ERM {key}, seed {seed}")
            accs.append(accuracy(model, test, test_y))
        mean, std = mean_std(accs)
        rows.append({"set": ROWS[key], "n_train": len(images), "accuracies": accs, "mean": mean, "std": std})
    meta = data["meta"]
    return {"dataset": dataset.name, "label_keys": meta["label_keys"], "classes": meta["classes"],
            "n_classes": n_classes, "n_labelled": len(labelled), "n_generated": len(generated["images"]),
            "n_test": len(test), "test_source": meta["test_source"], "seeds": list(range(p.seeds)),
            "classifier": {**c.model_dump(), "init": (f"weights from {c.weights}" if c.weights else
                                                      "from scratch (no pretrained weights)")},
            "generator": generated["meta"], "rows": rows, "skipped": _skipped(meta), "not_run": SSL_NOT_RUN,
            SHORTFALLS: meta.get(SHORTFALLS, [])}


def _skipped(meta: dict) -> dict[str, Any]:
    return {"classes": meta["skipped_classes"], "unlabelled_training": meta["unlabelled_training"],
            "unlabelled_test": meta["unlabelled_test"], "test_outside_classes": meta["test_outside_classes"],
            "test_not_drawn": meta["test_not_drawn"], "label_problems": meta["label_problems"]}


def _percent(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _listed(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def augmentation_table(result: dict[str, Any]) -> str:
    """The Table 2 analogue as markdown: test accuracy (%) per training set,
    mean ± std over the seeds and each replicate, then what was left out and why."""
    g, c, s = result["generator"], result["classifier"], result["skipped"]
    lines = [f"# ANL augmentation (Table 2 analogue): {result['dataset']}", "",
             f"{result['n_classes']} classes ({', '.join(result['label_keys'])}: {', '.join(result['classes'])}); "
             f"{result['n_labelled']} labelled training images; {result['n_generated']} generated by {g['model']} "
             f"({g['per_labelled']} per labelled image, conditioned on its CLIP embedding, mask rate "
             f"{g['mask_rate']:g}, {g['sampler']}), each labelled like its condition image; "
             f"{result['n_test']} test images ({result['test_source']}).", "",
             f"Classifier: torchvision {c['arch']}, {c['init']}; ERM (cross-entropy), AdamW, {c['steps']} steps, "
             f"batch {c['batch_size']}, lr {c['lr']:g}, weight decay {c['weight_decay']:g}, "
             f"flips {'on' if c['hflip'] else 'off'}; seeds {result['seeds']}.", "",
             "| training set | n train | test accuracy (%) mean ± std | per seed |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['set']} | {r['n_train']} | {_percent(r['mean'])} ± {_percent(r['std'])} | "
                     f"{', '.join(_percent(a) for a in r['accuracies'])} |")
    lines += ["", f"- {result['not_run']}", "- the generated images: augmentation_generated.png (each labelled image, "
              "then what was generated from it)"]
    for name, n in s["classes"].items():
        lines.append(f"- skipped class {name}: {n} training image(s), fewer than labels_per_class")
    for key, what in (("unlabelled_training", "training"), ("unlabelled_test", "test-pool")):
        if s[key]:
            lines.append(f"- skipped: {len(s[key])} {what} image(s) without a label line: {_listed(s[key])}")
    if s["test_outside_classes"]:
        lines.append(f"- skipped: {s['test_outside_classes']} test image(s) of a class not kept for training")
    if s["test_not_drawn"]:
        lines.append(f"- {s['test_not_drawn']} further labelled test image(s) not drawn (n_test)")
    lines += [f"- unusable label line or file: {p}" for p in s["label_problems"][:20]]
    return "\n".join(lines + shortfall_lines(result) + [""])
