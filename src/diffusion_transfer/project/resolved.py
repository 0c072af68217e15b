"""The run's parameters resolved once, before any node runs.

:func:`resolve_parameters` validates every block of the parameter tree,
merges the per-dataset and per-method overrides, expands the method presets
and builds each method's loss once on the default schedule (so a bad
hyperparameter stops the run before any compute). The hook hands nodes the
typed results (:func:`typed_parameters`): a node reads ``run.hyperparameters``
and ``run.train``, and parses nothing again. Every error names the YAML key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import PrivateAttr

from diffusion_transfer.core.methods import build_method, expand_preset
from diffusion_transfer.core.schedule import NoiseSchedule, make_schedule
from diffusion_transfer.core.training import TrainConfig
from diffusion_transfer.project import schema as S
from diffusion_transfer.project.declared import Declarations, declarations, sampling_param, with_declared_names
from diffusion_transfer.project.known_keys import UNKNOWN_KEYS, unknown_key_problems
from diffusion_transfer.project.schema_editing import EditingParams, editing_for


@dataclass(frozen=True)
class Run:
    """One method fine-tuned on one dataset: its hyperparameters (presets
    expanded, the dataset's overrides merged) and its training settings."""

    method: str
    dataset: str
    hyperparameters: dict[str, Any]
    train: TrainConfig
    #: ``train`` as the checkpoint key reads it (``TrainParams.run_config``)
    train_settings: dict[str, Any]
    #: samples during training (``{"every", "n", "steps"}``), None when off; they change no weight
    samples: dict[str, int] | None = None
    #: ``train.adapter`` built (``core.models.lora.LoraSpec``); None: no adapter (docs/LORA.md)
    adapter: Any = None

    @property
    def name(self) -> str:
        return f"{self.method}_{self.dataset}"

    def record(self) -> dict[str, Any]:
        """The run as the report, the tracking and the checkpoint key read it."""
        return {"run": self.name, "method": self.method, "dataset": self.dataset,
                "hyperparameters": dict(self.hyperparameters), "train": dict(self.train_settings),
                "samples": self.samples}


def resolve_run(method: S.MethodParams | dict, dataset: S.DatasetParams | dict, train_defaults: dict) -> Run:
    """Merge method defaults, the dataset's per-method overrides and the
    training defaults into one run.

    Training settings, later winning: ``train``, ``methods.<m>.train``,
    ``datasets.<d>.train``, ``datasets.<d>.method_overrides.<m>.train`` (e.g.
    TAN's 300 iterations where the dataset gives every other method 5,000)."""
    m = S.parse(S.MethodParams, method, "methods")
    d = S.parse(S.DatasetParams, dataset, "datasets")
    override = dict(d.method_overrides.get(m.name, {}))
    run_train = override.pop("train", {}) or {}
    if not isinstance(run_train, dict):
        raise S.InvalidParametersError(f"Invalid parameters in 'datasets.{d.name}.method_overrides.{m.name}.train':"
                                       f" it must be a mapping, got {run_train!r}")
    try:  # a preset names the paper's values (SDFT Table 5); each layer's own keys win over its preset
        hyper = {**expand_preset(m.name, m.hyperparameters()), **expand_preset(m.name, override)}
    except ValueError as err:
        raise S.InvalidParametersError(f"Invalid parameters in 'methods.{m.name}' or "
                                       f"'datasets.{d.name}.method_overrides.{m.name}': {err}") from None
    t = S.parse(S.TrainParams, {**train_defaults, **m.train, **d.train, **run_train},
                f"train (with methods.{m.name}.train and datasets.{d.name}.train"
                + (f" and datasets.{d.name}.method_overrides.{m.name}.train)" if run_train else ")"))
    settings = t.run_config()
    loop = TrainConfig(**{k: v for k, v in settings.items() if k != "adapter"})
    try:
        adapter = t.adapter.build() if t.adapter else None
    except ValueError as err:
        raise S.InvalidParametersError(f"Invalid parameters in 'train.adapter' (run {m.name}_{d.name}): {err}") from None
    return Run(m.name, d.name, hyper, loop, settings, t.sample_settings(), adapter)


def check_method_builds(run: Run, schedule: NoiseSchedule | None = None) -> None:
    """Build the run's loss on the default schedule, so that an unknown or
    invalid hyperparameter stops the run now; the node builds it again on
    the source model's own schedule, which only the loaded model knows."""
    try:
        spec = build_method(run.method, run.hyperparameters, schedule or make_schedule())
    except (TypeError, ValueError) as err:
        raise S.InvalidParametersError(f"Invalid parameters in 'methods.{run.method} (with datasets.{run.dataset}"
                                       f".method_overrides)': {err}") from None
    if run.adapter is not None and spec.init == "random":
        raise S.InvalidParametersError(
            f"Invalid parameters in 'train.adapter' (run {run.name}, with methods.{run.method}.train and "
            f"datasets.{run.dataset}.train): {run.method} trains every weight from a random init, and an adapter "
            "would freeze that random base and train only low-rank updates on it. Remove the adapter for "
            f"{run.method}: 'methods.{run.method}.train.adapter: null' (conf/base sets it), or "
            f"'datasets.{run.dataset}.method_overrides.{run.method}.train.adapter: null' where the dataset sets one")


class TrainingRuns(Mapping[str, Run]):
    """Every method's run on every dataset, by run name (``sdft_aahq``): what
    the finetune nodes receive for ``params:train``."""

    def __init__(self, runs: dict[str, Run]) -> None:
        self._runs = dict(runs)

    def of(self, method: S.MethodParams, dataset: S.DatasetParams) -> Run:
        name = f"{method.name}_{dataset.name}"
        if name not in self._runs:
            raise KeyError(f"no resolved run {name!r}; resolved: {sorted(self._runs)}")
        return self._runs[name]

    def __getitem__(self, name: str) -> Run:
        return self._runs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)


class ResolvedDataset(S.DatasetParams):
    """A dataset's parameters with the global blocks it overrides already
    merged: what nodes receive for ``params:datasets.<name>``."""

    _translation: S.TranslationParams | None = PrivateAttr(None)
    _editing: EditingParams | None = PrivateAttr(None)

    @classmethod
    def of(cls, d: S.DatasetParams, translation: S.TranslationParams | None = None,
           editing: EditingParams | None = None) -> ResolvedDataset:
        out = cls.model_construct(**dict(d))  # d is valid already: no second validation
        out._translation, out._editing = translation, editing
        return out

    @property
    def translation_params(self) -> S.TranslationParams:
        return _given(self._translation, "translation", self.name)

    @property
    def editing_params(self) -> EditingParams:
        return _given(self._editing, "editing", self.name)


def _given(value: Any, block: str, dataset: str) -> Any:
    if value is None:
        raise S.InvalidParametersError(f"Invalid parameters in '{block}': the block is missing, and a node of "
                                       f"dataset {dataset!r} needs it; add it to conf/base or your environment")
    return value


@dataclass(frozen=True)
class ResolvedParameters:
    declared: Declarations
    methods: dict[str, S.MethodParams]
    runs: TrainingRuns
    #: the global blocks, typed (absent blocks are left out)
    blocks: dict[str, Any] = field(default_factory=dict)
    #: per dataset: the ``translation`` and ``editing`` blocks with its overrides merged
    datasets: dict[str, ResolvedDataset] = field(default_factory=dict)
    #: per dataset: the ``classifier`` block with ``classifier.datasets.<name>`` merged
    classifiers: dict[str, S.ClassifierParams] = field(default_factory=dict)
    #: per source domain: the ``sampling`` block with ``sources.<name>.sampling`` merged
    sampling: dict[str, S.SamplingParams] = field(default_factory=dict)


_BLOCKS = {"schedule": S.ScheduleParams, "sampling": S.SamplingParams, "evaluation": S.EvaluationParams,
           "translation": S.TranslationParams, "classifier": S.ClassifierParams, "convert_source": S.ConvertParams}


def resolve_parameters(parameters: dict[str, Any], locate: Callable[[str], str] | None = None) -> ResolvedParameters:
    """Validate and resolve every parameter block the project knows, naming
    the failing parameter (and with ``locate``, the file that sets it: a
    ``known_keys.KeyLocator``); raises :class:`InvalidParametersError` before any compute."""
    unknown = unknown_key_problems(parameters, locate)
    if unknown:  # all of them at once: each would otherwise be ignored, with a default in its place
        raise S.InvalidParametersError(UNKNOWN_KEYS + "\n  ".join(unknown))
    parameters = with_declared_names(parameters)
    blocks = {key: S.parse(model, parameters[key], key) for key, model in _BLOCKS.items() if key in parameters}
    if "editing" in parameters:
        blocks["editing"] = editing_for(parameters["editing"])
    if "classifier" in blocks:
        _check_classifier_training(blocks["classifier"])
    methods = {name: S.parse(S.MethodParams, block, f"methods.{name}")
               for name, block in (parameters.get("methods") or {}).items()}
    declared = declarations(parameters)  # sources and datasets: names, kinds, source domains
    train = parameters.get("train") or {}
    runs: dict[str, Run] = {}
    datasets: dict[str, ResolvedDataset] = {}
    classifiers: dict[str, S.ClassifierParams] = {}
    default_schedule = make_schedule()  # every loss is checked on it (the model's own is known only when loaded)
    for name, target in declared.datasets.items():
        d = target.params
        S.parse(S.TrainParams, {**train, **d.train}, f"train (with datasets.{name}.train)")
        if "evaluation" in blocks:
            blocks["evaluation"].check_inception_score(d)
        for m in methods.values():
            run = resolve_run(m, d, train)
            check_method_builds(run, default_schedule)
            runs[run.name] = run
        datasets[name] = ResolvedDataset.of(
            d,
            S.translation_for(parameters["translation"], d) if "translation" in parameters else None,
            editing_for(parameters.get("editing"), d) if "editing" in parameters or d.editing else None)
        if "classifier" in blocks:
            classifiers[name] = blocks["classifier"].for_dataset(name)
    sampling = {name: S.sampling_for(parameters["sampling"], source.params)
                for name, source in declared.sources.items() if "sampling" in parameters}
    return ResolvedParameters(declared, methods, TrainingRuns(runs), blocks, datasets, classifiers, sampling)


def _check_classifier_training(base: S.ClassifierParams) -> None:
    for name in [None, *base.datasets]:
        c = base.for_dataset(name) if name else base
        try:
            TrainConfig(**{"steps": 1, "batch_size": 1, **c.train})
        except Exception as err:  # noqa: BLE001 - pydantic names the field
            where = "classifier.train" + (f" (with classifier.datasets.{name})" if name else "")
            raise S.InvalidParametersError(f"Invalid parameters in '{where}': {err}") from None


#: Global blocks handed to nodes typed (the others reach nodes as conf gives them).
_TYPED_BLOCKS = ("schedule", "sampling", "evaluation", "translation", "editing", "convert_source")


def typed_parameters(resolved: ResolvedParameters) -> dict[str, Any]:
    """Catalog parameter entries -> the typed values nodes receive in their place:
    ``params:train`` becomes every run, ``params:classifier`` each dataset's block,
    and each source's sampling settings appear as ``params:sources.<s>.sampling``."""
    out: dict[str, Any] = {"params:train": resolved.runs, "params:classifier": resolved.classifiers}
    out.update({f"params:methods.{name}": m for name, m in resolved.methods.items()})
    out.update({f"params:datasets.{name}": d for name, d in resolved.datasets.items()})
    out.update({f"params:{key}": resolved.blocks[key] for key in _TYPED_BLOCKS if key in resolved.blocks})
    out.update({sampling_param(name): block for name, block in resolved.sampling.items()})
    return out


def run_inputs(method: dict, dataset: dict, train: dict) -> tuple[S.MethodParams, S.DatasetParams, TrainingRuns]:
    """The finetune node's ``method``, ``dataset`` and ``runs`` for one run,
    resolved as the hook would, for a call outside a Kedro session (a notebook, a test)."""
    m = S.parse(S.MethodParams, method, "methods")
    d = S.parse(S.DatasetParams, dataset, "datasets")
    run = resolve_run(m, d, train)
    check_method_builds(run)
    return m, d, TrainingRuns({run.name: run})
