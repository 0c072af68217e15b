"""``classifier_<dataset>``: the noisy domain classifier p(domain | x_t, t),
source (0) vs target (1), for TAN's similarity guidance (and EGSDE).

Training data: ``classifier.source_images`` source-domain images (FaceWorld:
``faceworld_ffhq``, the source model's training domain; paper: FFHQ) against
the target's training images (the curated set: 10 shots for a few-shot
target), repeated to balance the two classes. Held out for the report: a share
of the source images and the target images that are not training images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffusion_transfer.core.data.images import ImageFolderError, to_tensor  # noqa: E402
from diffusion_transfer.core.models.domain_classifier import DomainClassifier  # noqa: E402
from diffusion_transfer.core.models.latent import latent_codec_of  # noqa: E402
from diffusion_transfer.core.training import TrainConfig, train  # noqa: E402
from diffusion_transfer.core.training.domain_classifier import (  # noqa: E402
    accuracy_by_timestep,
    domain_classifier_loss,
)
from diffusion_transfer.project.schema import ClassifierParams, ScheduleParams  # noqa: E402
from diffusion_transfer.pipelines.model_space import cached_latents  # noqa: E402
from diffusion_transfer.pipelines.schedule import model_schedule  # noqa: E402
from diffusion_transfer.pipelines.shortfall import KEY as SHORTFALLS, fewer_than_asked  # noqa: E402
from diffusion_transfer.pipelines.skipped_files import skipped_records  # noqa: E402
from diffusion_transfer.pipelines.source_domain import source_images  # noqa: E402

_TRAIN_DEFAULTS = {"steps": 1500, "batch_size": 64, "lr": 3e-4, "ema_decay": 0.0, "checkpoint_every": 500,
                   "log_every": 50, "hflip": True}


def train_domain_classifier(source_folder, curated: dict, reference: dict, source_model,
                            classifiers: dict[str, ClassifierParams], schedule: ScheduleParams, checkpoint_root: str,
                            dataset: str):
    """Source images (0) against the dataset's training images (1), noised
    with the source model's own schedule (the one TAN and EGSDE guide).
    ``classifiers``: each dataset's ``classifier`` block, resolved before the
    run (``params:classifier``)."""
    p = classifiers[dataset]
    sched = model_schedule(source_model, schedule)
    size = int(curated["images"].shape[1])
    ingest = source_images(source_folder, size)  # a folder, or the source model's samples in its place
    if len(ingest.names) < 4:
        raise ImageFolderError(f"classifier_{dataset}: only {len(ingest.names)} usable source images in "
                               f"{ingest.origin} (at least 4 needed; skipped: "
                               f"{'; '.join(f'{n}: {r}' for n, r in ingest.skipped[:5]) or 'none'}); add images to "
                               "the source domain's 'images' folder")
    rng = np.random.default_rng(p.seed)
    order = rng.permutation(len(ingest.names))[: p.source_images]
    n_held = max(1, int(round(p.held_out * len(order))))
    src_train = to_tensor(ingest.images[order[n_held:]])
    src_held = to_tensor(ingest.images[order[:n_held]])
    trg_train = to_tensor(curated["images"].numpy())
    train_names = set(curated["meta"].get("names", []))
    ref_names = reference["meta"].get("names", [])
    held_idx = [i for i, n in enumerate(ref_names) if n not in train_names] if ref_names else []
    trg_held = to_tensor(reference["images"].numpy()[held_idx[:n_held]]) if held_idx else trg_train[:0]
    if trg_train.shape[0] == 0:
        raise ValueError(f"classifier_{dataset}: the target training set is empty")
    # A latent source model is guided in its latent space: the classifier reads latents.
    cache = Path(checkpoint_root) / "latents"
    src_train, src_held, trg_train, trg_held = (cached_latents(source_model, x, cache)
                                                for x in (src_train, src_held, trg_train, trg_held))
    channels, size = int(src_train.shape[1]), int(src_train.shape[-1])
    repeats = int(np.ceil(src_train.shape[0] / trg_train.shape[0]))
    trg_balanced = trg_train.repeat(repeats, 1, 1, 1)[: src_train.shape[0]]
    images = torch.cat([src_train, trg_balanced])
    labels = torch.cat([torch.zeros(src_train.shape[0]), torch.ones(trg_balanced.shape[0])])

    config = TrainConfig(**{**_TRAIN_DEFAULTS, **p.train, "seed": p.seed})
    torch.manual_seed(p.seed)
    model = DomainClassifier(sample_size=size, **p.network, **({"in_channels": channels} if channels != 3 else {}))
    key = hashlib.sha256(json.dumps({"params": p.model_dump(), "schedule": sched.describe()},
                                    sort_keys=True, default=str).encode())
    key.update(images.numpy().tobytes())
    ckpt = Path(checkpoint_root) / f"classifier_{dataset}" / key.hexdigest()[:12]
    result = train(model, domain_classifier_loss(sched), images, config, conditions=labels, checkpoint_dir=ckpt,
                   latents=latent_codec_of(source_model) is not None,  # a latent source: its latents may leave [-1, 1]
                   desc=f"classifier_{dataset}")
    clf = result.final_model.eval()

    held_images = torch.cat([src_held, trg_held])
    held_labels = torch.cat([torch.zeros(src_held.shape[0]), torch.ones(trg_held.shape[0])])
    by_t = {"all": accuracy_by_timestep(clf, held_images, held_labels, sched, p.buckets, p.repeats, p.seed)}
    for name, imgs, lab in (("source", src_held, 0.0), ("target", trg_held, 1.0)):
        if imgs.shape[0]:
            by_t[name] = accuracy_by_timestep(clf, imgs, torch.full((imgs.shape[0],), lab), sched, p.buckets,
                                              p.repeats, p.seed)
    report = {"dataset": dataset, "train": {"source": int(src_train.shape[0]), "target": int(trg_train.shape[0]),
                                            "target_repeated_to": int(trg_balanced.shape[0])},
              "held_out": {"source": int(src_held.shape[0]), "target": int(trg_held.shape[0])},
              "accuracy_by_timestep": by_t, "config": config.model_dump(), "network": clf.config,
              "history": result.history, "checkpoint_dir": str(ckpt),
              "source_folder": ingest.origin, "skipped_source_images": skipped_records(ingest.skipped),
              SHORTFALLS: fewer_than_asked(f"classifier_{dataset}", "classifier.source_images", p.source_images,
                                           len(order), "source images",
                                           f"{ingest.origin} has {len(ingest.names)} usable images")}
    return clf, report, _accuracy_plot(by_t, dataset)


def _accuracy_plot(by_t: dict[str, list[dict]], dataset: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, rows in by_t.items():
        mids = [(r["t_from"] + r["t_to"]) / 2 for r in rows]
        ax.plot(mids, [r["accuracy"] for r in rows], marker="o", label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"Noisy domain classifier: {dataset}")
    ax.legend()
    fig.tight_layout()
    return fig


def classifier_summary(report: dict[str, Any]) -> str:
    rows = report["accuracy_by_timestep"]["all"]
    return ", ".join(f"t {r['t_from']}-{r['t_to']}: {r['accuracy']:.2f}" for r in rows)
