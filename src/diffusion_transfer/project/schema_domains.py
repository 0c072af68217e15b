"""Typed ``datasets.<d>`` and ``sources.<s>``: the target datasets and the
source domains they are adapted from (re-exported by ``schema.py``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from diffusion_transfer.project.schema_augment import AugmentationParams
from diffusion_transfer.project.schema_base import ClassLabel, StrictParams


class CurateParams(StrictParams):
    #: Images are prepared at the source model's ``sample_size``; an explicit
    #: value must agree with it (checked before any compute).
    resolution: int | None = Field(None, ge=8)
    min_size: int | None = Field(None, ge=1)
    #: CLIP-similarity filter (AAHQ): keep scores >= threshold, or the top_n.
    prompt: str | None = None
    threshold: float | None = None
    top_n: int | None = Field(None, ge=1)
    #: Zero-shot removal (MetFaces glasses): the image is dropped when the
    #: probability mass on ``remove_prompts`` exceeds ``remove_threshold``.
    keep_prompts: list[str] = Field(default_factory=list)
    remove_prompts: list[str] = Field(default_factory=list)
    remove_threshold: float = Field(0.5, gt=0, lt=1)
    exclude: list[str] = Field(default_factory=list)
    #: null: ``<paths.features>/clip_embeddings`` (under the environment's data root)
    embeddings_cache: str | None = None
    #: Few-shot datasets (TAN protocol): a deterministic n_shot split; the rest
    #: is the evaluation reference.
    n_shot: int | None = Field(None, ge=1)
    split_seed: int = 0

    @model_validator(mode="after")
    def _one_rule(self) -> "CurateParams":
        if self.prompt is not None and (self.threshold is None) == (self.top_n is None):
            raise ValueError("with a prompt, set exactly one of threshold and top_n")
        if bool(self.keep_prompts) != bool(self.remove_prompts):
            raise ValueError("keep_prompts and remove_prompts go together")
        return self


class DatasetParams(StrictParams):
    """One target dataset, declared under ``datasets.<name>`` (any
    environment, ``conf/local`` included). Declaring it makes
    ``curate_<name>``, ``classifier_<name>``, ``<method>_<name>`` and
    ``compare_<name>`` exist (``pipeline_registry``)."""

    #: Filled from the key by the project's config loader.
    name: str
    #: ``full``: curated by ``curation`` (CLIP filter or zero-shot removal, or
    #: kept whole); ``few_shot``: a deterministic ``curation.n_shot`` split, the
    #: rest is the FID reference (TAN protocol).
    kind: Literal["full", "few_shot"] = "full"
    #: The source domain it is adapted from (a key of ``sources``).
    source: str = "ffhq"
    #: Its images: a catalog entry, or a folder (a path with a ``/``);
    #: null: the catalog entry ``<name>_raw``.
    images: str | None = None
    curation: CurateParams = Field(default_factory=lambda: CurateParams())
    #: Which images FID/KID compare against: the whole raw dataset (the SDFT
    #: paper's AAHQ protocol; for a few-shot split, the held-out rest), the
    #: curated training set (MetFaces), or ``full``: every usable image of the
    #: folder, training images included (ANL 4.2: a subset's FID is against the full dataset).
    fid_reference: Literal["raw", "curated", "full"] = "curated"
    #: A class-conditional source model: the label this dataset's images are
    #: trained and sampled with (an index, or ``unconditional``: the null
    #: label); null: the source's ``class_label`` (docs/DEVIATIONS.md: ANL).
    class_label: ClassLabel | None = None
    #: Per-method hyperparameters for this dataset (SDFT Table 5), merged over
    #: the method's defaults.
    method_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    #: Few-shot targets: intra-LPIPS (CDC/TAN protocol) against the training shots.
    intra_lpips: bool = False
    intra_lpips_max_per_cluster: int = Field(50, ge=2)
    #: FaceWorld's attribute metrics apply (face rate, retention, coverage): its
    #: attribute classifier reads FaceWorld faces only, so only FaceWorld datasets set it.
    attributes: bool = False
    #: The images are faces: the ArcFace identity metric applies (when weights are given).
    faces: bool = False
    #: Samples of the fine-tuned model for this dataset's metrics: the first n of
    #: the noise bank (whose source samples they are compared with); null: all.
    #: TAN's few-shot protocol uses 1,000.
    n_samples: int | None = Field(None, ge=2)
    #: The Inception Score for this dataset; null: ``evaluation.inception_score``.
    inception_score: bool | None = None
    #: Overrides of the ``translation`` block for this dataset (e.g. the SDFT
    #: paper's editing range t0 = 0.625 for AAHQ), merged one level deep.
    translation: dict[str, Any] = Field(default_factory=dict)
    #: Overrides of the ``editing`` block for this dataset (e.g. SDFT app. E's
    #: 500 MetFaces / 400 AAHQ test images), merged one level deep.
    editing: dict[str, Any] = Field(default_factory=dict)
    #: ANL Table 2's semi-supervised augmentation (``anl_augment_<name>``, schema_augment.py); null: none.
    augmentation: AugmentationParams | None = None
    #: A text-to-image source (Stable Diffusion layout): one prompt for every
    #: image (DreamBooth style), used where the folder has no ``metadata.jsonl``
    #: (diffusers' image-folder captions: ``file_name`` and ``text`` per line).
    instance_prompt: str | None = None


class SourceParams(StrictParams):
    """A source domain under ``sources.<name>``: the pretrained model and the
    images it was trained on (the domain classifier's class 0 and the
    translation inputs). ``model`` and ``images`` are catalog entries or
    paths (a path has a ``/``; the model may be a diffusers model folder, a
    pipeline folder with ``unet/`` and ``scheduler/``, or a Hub id)."""

    name: str
    model: str
    #: The images the model was trained on, or null (a downloaded model rarely
    #: comes with them): the domain classifier and the translation inputs then
    #: use the source model's own samples, labelled as such (conf/README.md).
    images: str | None = None
    #: Prefix of its derived catalog names (noise bank, samples, translation
    #: inputs); null: ``<name>_``. The first source (FFHQ) uses "".
    prefix: str | None = None
    #: A class-conditional model (``num_class_embeds``): the class label its own
    #: samples are drawn with, an index or ``unconditional`` (the null label).
    class_label: ClassLabel | None = None
    #: Overrides of the ``sampling`` block for this model and every model
    #: fine-tuned from it, merged key by key (ANL samples its LDM with 200 DDIM
    #: steps beside SDFT's 40 on FFHQ); its source samples share them, so
    #: source and target samples stay comparable.
    sampling: dict[str, Any] = Field(default_factory=dict)

    @property
    def catalog_prefix(self) -> str:
        return f"{self.name}_" if self.prefix is None else self.prefix
