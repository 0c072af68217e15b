"""Cross-cutting hooks: parameter validation and the missing-inputs check before any node runs."""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl

from diffusion_transfer.pipelines import params as P


def validate_parameters(parameters: dict[str, Any]) -> None:
    """Validate every parameter block the project knows, naming the failing
    parameter; raises :class:`InvalidParametersError` before any compute."""
    blocks = {"schedule": P.ScheduleParams, "sampling": P.SamplingParams, "evaluation": P.EvaluationParams,
              "translation": P.TranslationParams}
    for key, model in blocks.items():
        if key in parameters:
            P.parse(model, parameters[key], key)
    if "classifier" in parameters:
        base = P.parse(P.ClassifierParams, parameters["classifier"], "classifier")
        from diffusion_transfer.core.training import TrainConfig

        for name in [None, *base.datasets]:
            c = base.for_dataset(name) if name else base
            try:
                TrainConfig(**{"steps": 1, "batch_size": 1, **c.train})
            except Exception as err:  # pydantic names the field
                where = "classifier.train" + (f" (with classifier.datasets.{name})" if name else "")
                raise P.InvalidParametersError(f"Invalid parameters in '{where}': {err}") from None
    if "convert_source" in parameters:
        from diffusion_transfer.pipelines.convert import ConvertParams

        P.parse(ConvertParams, parameters["convert_source"], "convert_source")
    for name, block in (parameters.get("curate") or {}).items():
        P.parse(P.CurateParams, block, f"curate.{name}")
    for name, block in (parameters.get("methods") or {}).items():
        P.parse(P.MethodParams, block, f"methods.{name}")
    _validate_methods(parameters, None)
    train = parameters.get("train") or {}
    for name, block in (parameters.get("datasets") or {}).items():
        d = P.parse(P.DatasetParams, block, f"datasets.{name}")
        P.parse(P.TrainParams, {**train, **d.train}, f"train (with datasets.{name}.train)")
        for mname, mblock in (parameters.get("methods") or {}).items():
            from diffusion_transfer.pipelines.method import resolve_run

            try:
                resolve_run(mblock, block, train)  # the run's merged train settings, validated
            except ValueError as err:
                if isinstance(err, P.InvalidParametersError):
                    raise
                raise P.InvalidParametersError(f"Invalid parameters in 'datasets.{name}': {err}") from None
        _validate_methods(parameters, d)
        if "translation" in parameters:
            P.translation_for(parameters["translation"], d)


def _validate_methods(parameters: dict[str, Any], dataset: P.DatasetParams | None) -> None:
    from diffusion_transfer.core.methods import build_method
    from diffusion_transfer.core.schedule import make_schedule

    sched = make_schedule(**P.parse(P.ScheduleParams, parameters.get("schedule"), "schedule").model_dump())
    for name, block in (parameters.get("methods") or {}).items():
        m = P.parse(P.MethodParams, block, f"methods.{name}")
        overrides = dataset.method_overrides.get(m.name, {}) if dataset else {}
        overrides = {k: v for k, v in overrides.items() if k != "train"}  # training settings, not the loss's
        where = f"methods.{name}" + (f" (with datasets.{dataset.name}.method_overrides)" if dataset else "")
        try:
            build_method(m.name, {**m.hyperparameters(), **overrides}, sched)
        except (TypeError, ValueError) as err:
            raise P.InvalidParametersError(f"Invalid parameters in '{where}': {err}") from None


class ValidateParametersHook:
    @hook_impl
    def after_context_created(self, context) -> None:
        self._context = context

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        from diffusion_transfer.preflight import check_inputs

        validate_parameters(self._context.params)
        check_inputs(pipeline, catalog, self._context.params)
