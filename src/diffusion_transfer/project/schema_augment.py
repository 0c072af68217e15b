"""Typed ``datasets.<d>.augmentation`` parameters: ANL's semi-supervised
augmentation experiment (Transferring Pretrained DPMs, Table 2, section 4.1),
the pipeline ``anl_augment_<d>`` (made only for a dataset that declares the block)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from diffusion_transfer.project.schema_base import StrictParams


class AugmentClassifierParams(StrictParams):
    """The classifier trained by ERM on each training set: a torchvision
    architecture, from scratch or from a local torchvision state_dict."""

    arch: Literal["resnet18", "resnet50"] = "resnet18"
    #: A local torchvision state_dict (e.g. ImageNet's resnet50-11ad3fa6.pth); null: from scratch.
    weights: str | None = None
    steps: int = Field(500, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    #: random horizontal flips of the training batches (the loop's ``hflip``)
    hflip: bool = True

    def train_config(self, seed: int) -> dict[str, Any]:
        """The shared loop's settings (core.training.TrainConfig) for one replicate: no EMA, no clipping."""
        return {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay,
                "hflip": self.hflip, "seed": seed, "ema_decay": 0.0, "grad_clip": None,
                "log_every": max(1, self.steps // 10), "checkpoint_every": self.steps}


class AugmentationParams(StrictParams):
    """``labels_per_class`` labelled training images per class; ``per_labelled``
    images generated from each by the fine-tuned ANL model, conditioned on its
    CLIP embedding and labelled with its class; a classifier trained by ERM with
    and without them, ``seeds`` times each, scored on the test images."""

    #: The JSONL file of labels: a name in the dataset's image folder (and in
    #: ``test_images``), or an absolute path. One ``{"file": ..., <key>: ...}`` a line.
    labels: str = "attributes.jsonl"
    #: An image's class is the tuple of these keys' values.
    label_keys: list[str] = Field(min_length=1)
    labels_per_class: int = Field(4, ge=1)
    per_labelled: int = Field(10, ge=1)
    #: At most this many test images (a seeded draw); null: all.
    n_test: int | None = Field(500, ge=1)
    #: Replicates of each classifier (training seeds 0 .. seeds-1).
    seeds: int = Field(3, ge=1)
    #: Seed of the labelled images' and the test images' draws.
    split_seed: int = 0
    #: A folder of held-out labelled test images (with its own labels file);
    #: null: the dataset's images outside its training set.
    test_images: str | None = None
    #: Rows (labelled images, one per class first) of the generated images' contact sheet.
    sheet_rows: int = Field(12, ge=1)
    classifier: AugmentClassifierParams = Field(default_factory=AugmentClassifierParams)

    @field_validator("label_keys")
    @classmethod
    def _distinct(cls, keys: list[str]) -> list[str]:
        if len(set(keys)) != len(keys) or not all(isinstance(k, str) and k.strip() for k in keys):
            raise ValueError(f"label keys must be distinct non-empty names, got {keys}")
        return keys
