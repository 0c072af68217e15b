"""The parameter schema: one pydantic model per block.

``resolved.py`` validates the run against it once, before any node runs; a
bad value fails with a message naming the parameter (e.g.
``train.batch_size``), and nodes receive the typed values.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, create_model, field_validator, model_validator

from diffusion_transfer.core.methods import method_names
from diffusion_transfer.core.methods.registry import ADAPTER_TYPES
from diffusion_transfer.core.models.lora import DEFAULT_RANK, DEFAULT_TARGET_MODULES
from diffusion_transfer.core.training import TrainConfig
from diffusion_transfer.core.translation.registry import TRANSLATORS, translator
from diffusion_transfer.core.translation.variants import resolve_options
from diffusion_transfer.core.world.render import ATTRIBUTES
from diffusion_transfer.project.schema_augment import AugmentationParams
from diffusion_transfer.project.schema_base import ClassLabel, InvalidParametersError, StrictParams, parse
from diffusion_transfer.project.schema_domains import CurateParams, DatasetParams, SourceParams
from diffusion_transfer.project.schema_studies import StudyParams

# Re-exported: nodes and the rest of the project import parameter types from here.
__all__ = ["AdapterParams", "AugmentationParams", "ClassLabel", "ClassifierParams", "ConditionParams", "ConvertParams", "CurateParams",
           "DatasetParams", "EvaluationParams", "InvalidParametersError", "MethodParams", "SamplingParams",
           "ScheduleParams", "SourceParams", "StudyParams", "TextToImageEvaluationParams", "TrainParams",
           "TranslationParams", "parse", "sampling_for", "translation_for"]


class ScheduleParams(StrictParams):
    """Overrides of the model's own noise schedule (its diffusers scheduler
    config; DDPM's linear 1e-4..0.02, T=1000, epsilon when the model folder
    has none). Null keeps the model's value; the report says which was used."""

    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "cosine"] | None = None
    num_train_timesteps: int | None = Field(None, ge=2)
    beta_start: float | None = Field(None, gt=0, lt=1)
    beta_end: float | None = Field(None, gt=0, lt=1)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] | None = None


class AdapterParams(StrictParams):
    """``train.adapter``: train a low-rank adapter on the base UNet's own
    layers instead of the layers themselves (docs/LORA.md). ``type`` names an
    adapter of the registry (``core/methods/registry.py``: ``lora``); the
    defaults are diffusers' LoRA training examples' (rank 4, alpha = rank,
    dropout 0, the attention projections)."""

    type: str
    rank: int = DEFAULT_RANK
    #: the update is scaled by alpha / rank; null: alpha = rank
    alpha: float | None = Field(None, gt=0, allow_inf_nan=False)
    dropout: float = Field(0.0, ge=0, lt=1)
    #: peft's matching: a module whose name is, or ends with '.' + , one of them
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES), min_length=1)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in ADAPTER_TYPES:
            raise ValueError(f"unknown adapter type {value!r}; known: {sorted(ADAPTER_TYPES)}")
        return value

    @field_validator("rank")
    @classmethod
    def _positive_rank(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"rank must be at least 1 (the inner size of the low-rank update B A; diffusers' "
                             f"examples use {DEFAULT_RANK}), got {value}")
        return value

    @model_validator(mode="after")
    def _alpha_defaults_to_rank(self) -> "AdapterParams":
        if self.alpha is None:
            self.alpha = float(self.rank)
        return self

    def build(self):
        """The core adapter spec (``core.models.lora.LoraSpec`` for ``lora``)."""
        return ADAPTER_TYPES[self.type](**self.model_dump(exclude={"type"}))


class TrainParams(TrainConfig):
    """``train`` and its overrides (``methods.<m>.train``, ``datasets.<d>.train``,
    ``datasets.<d>.method_overrides.<m>.train``): the core loop's own
    :class:`TrainConfig`, one schema, so every training option (``betas``,
    ``adam_eps``, ``keep_checkpoints``, EMA and lr warm-up...) is settable from
    conf with the loop's defaults. ``grad_clip`` null or 0 disables clipping."""

    # Samples during training (training_samples.py): not loop settings, so not in checkpoint keys.
    sample_every: int | None = Field(None, ge=0, description="sample every this many steps; 0 or null: off")
    sample_n: int = Field(4, ge=1, description="fixed noises sampled each time")
    sample_steps: int = Field(10, ge=1, description="DDIM steps of those samples")
    #: LoRA (docs/LORA.md); null: full fine-tuning, as the method defines it
    adapter: AdapterParams | None = None

    def run_config(self) -> dict[str, Any]:
        """The TrainConfig settings, and ``adapter`` when one is set. The
        scale-out keys are left out at 1 and ``adapter`` when null, so
        checkpoint keys (and resumes) of runs without them stay as they were."""
        scale = ("num_processes", "gradient_accumulation_steps")
        unset = {k for k in scale if getattr(self, k) == 1} | ({"adapter"} if self.adapter is None else set())
        unset |= {k for k in ("compile", "channels_last", "fused_optimizer", "tf32")  # issue 35: keys of runs
                  if not getattr(self, k)}
        # without them stay as they were
        return self.model_dump(exclude=unset | set(_SAMPLE_KEYS))

    def sample_settings(self) -> dict[str, int] | None:
        """``{"every", "n", "steps"}`` of the samples during training; None when off."""
        if not self.sample_every:
            return None
        return {"every": self.sample_every, "n": self.sample_n, "steps": self.sample_steps}


_SAMPLE_KEYS = ("sample_every", "sample_n", "sample_steps")


class SamplingParams(StrictParams):
    n_samples: int = Field(ge=2)
    sampler: Literal["ddim", "ddpm"] = "ddim"
    steps: int = Field(40, ge=1)
    eta: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    seed: int = 1234
    #: autocast precision of the model: on a GPU; on a CPU bf16 only where it is
    #: native (AVX-512 BF16 / AMX, refused elsewhere; fp16 runs float32 there)
    precision: Literal["no", "bf16", "fp16"] = "no"
    #: torch.compile the UNet call of the sampling loop (issue 35; compiled once per batch shape)
    compile: bool = False
    #: the UNet's 4-D weights in channels-last layout: faster convolutions (issue 35), same values
    channels_last: bool = False
    #: Classifier-free guidance of a class-conditional model trained with a null
    #: label: eps_null + scale * (eps_label - eps_null); 1 is no guidance.
    guidance_scale: float = Field(1.0, ge=0)
    #: A text-to-image model's prompts, one sample each, cycled over the noise
    #: bank; null: the dataset's training captions, cycled.
    prompts: list[str] | None = None
    #: A text-to-image model's negative prompt under guidance ("" : the empty prompt, diffusers' default).
    negative_prompt: str = ""


class AbsentConcept(StrictParams):
    """A concept the training set lacks, prompted for in a text-to-image run
    (issue 34): ``shows`` is what the attribute classifier must read for a
    sample to show it, FaceWorld attribute -> accepted values (all must hold)."""

    prompt: str = Field(min_length=1)
    shows: dict[str, list[str]] = Field(min_length=1)

    @field_validator("shows")
    @classmethod
    def _faceworld_values(cls, shows: dict[str, list[str]]) -> dict[str, list[str]]:
        for attribute, values in shows.items():
            if attribute not in ATTRIBUTES:
                raise ValueError(f"{attribute!r} is not an attribute the classifier reads; use one of "
                                 f"{', '.join(ATTRIBUTES)}")
            wrong = [v for v in values if v not in ATTRIBUTES[attribute]]
            if not values or wrong:
                raise ValueError(f"{attribute} needs values among {', '.join(ATTRIBUTES[attribute])}, got {values}")
        return shows


class TextToImageEvaluationParams(StrictParams):
    """``evaluation.text_to_image``: the metrics only a text-to-image run has
    (docs/METRICS.md): retention of ``absent_prompts``, each sampled from the
    first ``n_per_prompt`` noises of the bank by the source and the fine-tuned model."""

    absent_prompts: list[AbsentConcept] = Field(default_factory=list)
    n_per_prompt: int = Field(64, ge=1)


class EvaluationParams(StrictParams):
    #: Feature space for FID/KID: Inception from a local TorchScript file, or the
    #: world CLIP image encoder (a substitute, labelled as such in the report).
    fid_features: Literal["inception", "clip"] = "clip"
    inception_path: str | None = None
    #: FID/KID reference: at most this many images of the reference set (a
    #: fixed seeded subset); null uses them all (the papers' protocol).
    max_reference_images: int | None = Field(None, ge=2)
    lpips_net: Literal["alex", "vgg", "squeeze"] = "alex"
    lpips_backbone_weights: str | None = None
    lpips_pairs: int = Field(256, ge=1)
    #: ArcFace IR-SE50 for the face-identity metric (input vs translation): a
    #: local model_ir_se50.pth or the id ``arcface-ir-se50``; null: not measured.
    identity_weights: str | None = None
    attributes: bool = True
    cache_dir: str = "data/04_feature/fid_cache"
    #: Images per batch through the metric networks (Inception, LPIPS, ArcFace),
    #: which run on the GPU when there is one.
    batch_size: int = Field(64, ge=1)
    #: Inception under bf16/fp16 autocast on a GPU, or bf16 on a CPU that has it
    #: natively (labelled, cached apart); "no" keeps clean-fid's float32
    #: features, comparable with published FID.
    precision: Literal["no", "bf16", "fp16"] = "no"
    #: Compile the FID feature network (issue 35): Inception as a Python
    #: module under torch.compile, or the CLIP image encoder; same features within rounding.
    compile: bool = False
    #: The Inception Score of both models' samples (ANL Table 3), for every
    #: dataset unless ``datasets.<d>.inception_score`` says otherwise; off by default.
    inception_score: bool = False
    #: torch-fidelity's Inception (weights-inception-2015-12-05-6726825d.pth), a
    #: local file; null: FaceWorld's attribute classifier, labelled as a substitute
    #: (FaceWorld datasets only: ``datasets.<d>.attributes``).
    inception_score_weights: str | None = None
    #: IS is averaged over this many chunks of the samples (torch-fidelity's default).
    inception_score_splits: int = Field(10, ge=1)
    #: Text-to-image runs: the prompts of concepts the training set lacks (issue 34).
    text_to_image: TextToImageEvaluationParams = Field(default_factory=lambda: TextToImageEvaluationParams())

    def scores_inception(self, dataset: DatasetParams) -> bool:
        """Whether ``dataset``'s evaluation computes IS: its own flag, else ``inception_score``."""
        return self.inception_score if dataset.inception_score is None else dataset.inception_score

    def check_inception_score(self, dataset: DatasetParams) -> None:
        """IS needs a network: Inception weights, or a FaceWorld dataset for the substitute."""
        if self.scores_inception(dataset) and self.inception_score_weights is None and not dataset.attributes:
            raise InvalidParametersError(
                f"Invalid parameters in 'evaluation.inception_score_weights': the Inception Score of dataset "
                f"{dataset.name!r} needs an Inception network. Set it to torch-fidelity's local "
                "weights-inception-2015-12-05-6726825d.pth, or switch IS off with "
                f"'datasets.{dataset.name}.inception_score: false' (without weights, only FaceWorld datasets, "
                "'attributes: true', have a substitute classifier)")


class _SharedTranslationParams(StrictParams):
    """The translate stage: ``n_inputs`` source-domain images (a seeded subset
    of ``source_images``) translated by each enabled method."""

    n_inputs: int = Field(128, ge=1)
    seed: int = 0
    batch_size: int = Field(64, ge=1)
    precision: Literal["no", "bf16", "fp16"] = "no"   # GPU; CPU: bf16 where native (else refused), fp16 as float32
    channels_last: bool = False   # the two UNets' 4-D weights in channels-last layout, as sampling.channels_last
    t0: float = Field(0.5, ge=0, le=1)     # shared editing range of SDEdit and EGSDE
    #: ILVR's and EGSDE's implementation variant unless their block sets one
    variant: Literal["paper", "authors_code"] = "paper"
    grid_inputs: int = Field(8, ge=1)

    def enabled(self) -> list[str]:
        return [name for name in TRANSLATORS if getattr(self, name).enabled]

    def editing_range(self, name: str) -> float | None:
        """The translator's t0: its block's, or ``translation.t0`` where the block's is null and it shares it."""
        t0 = getattr(getattr(self, name), "t0", None)
        return self.t0 if t0 is None and translator(name).shares_t0 else t0

    def options(self, name: str) -> dict[str, Any]:
        """ILVR's or EGSDE's resolved variant and options (each null one from
        the variant); empty for the other methods."""
        keys = translator(name).variant_options
        if not keys:
            return {}
        block = getattr(self, name)
        variant = block.variant or self.variant
        return {"variant": variant, **resolve_options(name, variant, **{k: getattr(block, k) for k in keys})}

    def check_factors(self, size: int) -> None:
        """ILVR's and EGSDE's low-pass factor must divide the image size (the node and the pre-run check call it)."""
        for name, info in TRANSLATORS.items():
            block = getattr(self, name)
            if info.low_pass and block.enabled and size % block.factor:
                raise InvalidParametersError(f"Invalid parameters in 'translation.{name}.factor': {block.factor} must "
                                             f"divide the image size {size} (the source model's sample_size); use one "
                                             f"of {[f for f in range(2, size + 1) if size % f == 0][:8]}")


#: ``translation``: the shared settings plus one block per translator of the
#: registry (``translation.sdedit`` ...), each its own parameter model.
TranslationParams = create_model(
    "TranslationParams", __base__=_SharedTranslationParams, __module__=__name__,
    __doc__=_SharedTranslationParams.__doc__,
    **{name: (info.params, Field(default_factory=info.params)) for name, info in TRANSLATORS.items()},
)


def sampling_for(sampling: dict[str, Any], source: SourceParams) -> SamplingParams:
    """``sampling`` with ``sources.<name>.sampling`` merged over it."""
    return parse(SamplingParams, {**(sampling or {}), **source.sampling},
                 f"sampling (with sources.{source.name}.sampling)")


def translation_for(translation: dict[str, Any], dataset: DatasetParams) -> TranslationParams:
    """``translation`` with ``datasets.<name>.translation`` merged over it
    (sub-blocks such as ``sdedit`` merge key by key)."""
    merged = dict(translation or {})
    for key, value in dataset.translation.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return parse(TranslationParams, merged, f"translation (with datasets.{dataset.name}.translation)")


class ConditionParams(StrictParams):
    """How a conditional method (ANL) is conditioned when sampling: the noise
    bank's i-th sample conditions on training image i (cycled) with a random
    rectangle of side ``mask_rate`` masked (ANL section 3.3; the paper's
    delta = 0.5); ``prompts`` add text-conditioned samples to the report."""

    mask_rate: float = Field(0.5, ge=0, lt=1)
    prompts: list[str] = Field(default_factory=list)
    n_per_prompt: int = Field(8, ge=1)
    embeddings_cache: str = "data/04_feature/anl_conditions"
    #: ``anl_conditions_<d>`` (ANL app. A, Table 3; Figs. 3, 7-16): the fine-tuned
    #: model sampled at each mask rate, on seen (training) and unseen condition images.
    mask_rates: list[float] = Field(default_factory=lambda: [0.0, 0.5], min_length=1)

    @field_validator("mask_rates")
    @classmethod
    def _rates_in_range(cls, rates: list[float]) -> list[float]:
        if any(not 0 <= r < 1 for r in rates):
            raise ValueError(f"every mask rate must be in [0, 1), got {rates}")
        return rates


class MethodParams(StrictParams):
    """A method's name plus its hyperparameters (validated by the method's own
    constructor in ``core.methods``), training overrides for this method
    (merged over ``train``, under ``datasets.<name>.train``) and, for ANL, the
    sampling conditions."""

    model_config = ConfigDict(extra="allow")
    name: str
    train: dict[str, Any] = Field(default_factory=dict)
    condition: ConditionParams = Field(default_factory=ConditionParams)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in method_names():
            raise ValueError(f"unknown method {name!r}; known methods: {method_names()}")
        return name

    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ClassifierParams(StrictParams):
    """The noisy domain classifier p(domain | x_t, t) (TAN guidance, EGSDE)."""

    source_images: int = Field(2000, ge=2, description="source-domain images drawn from source_images")
    held_out: float = Field(0.1, gt=0, lt=1, description="share of each domain kept for the accuracy report")
    network: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    buckets: int = Field(10, ge=1)
    repeats: int = Field(2, ge=1)
    seed: int = 0
    #: Per-dataset overrides, e.g. {aahq: {train: {steps: 4500}}} (SDFT appendix D);
    #: ``train`` and ``network`` merge key by key.
    datasets: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def for_dataset(self, name: str) -> "ClassifierParams":
        over = self.datasets.get(name, {})
        merged = {**self.model_dump(exclude={"datasets"}), **over}
        for key in ("train", "network"):
            if isinstance(over.get(key), dict):
                merged[key] = {**getattr(self, key), **over[key]}
        return parse(ClassifierParams, merged, f"classifier (with classifier.datasets.{name})")


class ConvertParams(StrictParams):
    """``convert_source``: a guided-diffusion (ADM) checkpoint to convert into the source model."""

    checkpoint: str = "data/00_weights/ffhq_p2.pt"
    preset: str = "ffhq_p2"
    #: ADMConfig fields over the preset (e.g. {image_size: 64, channel_mult: [1, 2, 3, 4]})
    overrides: dict[str, Any] = Field(default_factory=dict)


