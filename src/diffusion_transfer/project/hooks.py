"""Cross-cutting hooks: parameter validation and the pre-run checks (inputs, models, folders, outputs)
before any node runs; the failing node's name on an error."""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl

from diffusion_transfer.project import schema as P
from diffusion_transfer.project.schema_editing import editing_for


def validate_parameters(parameters: dict[str, Any]) -> None:
    """Validate every parameter block the project knows, naming the failing
    parameter; raises :class:`InvalidParametersError` before any compute."""
    blocks = {"schedule": P.ScheduleParams, "sampling": P.SamplingParams, "evaluation": P.EvaluationParams,
              "translation": P.TranslationParams}
    for key, model in blocks.items():
        if key in parameters:
            P.parse(model, parameters[key], key)
    if "editing" in parameters:
        editing_for(parameters["editing"])
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
        from diffusion_transfer.pipelines.convert.nodes import ConvertParams

        P.parse(ConvertParams, parameters["convert_source"], "convert_source")
    for name, block in (parameters.get("methods") or {}).items():
        P.parse(P.MethodParams, block, f"methods.{name}")
    from diffusion_transfer.project.declared import declarations, with_declared_names

    parameters = with_declared_names(parameters)
    declarations(parameters)  # sources and datasets: names, kinds, source domains
    train = parameters.get("train") or {}
    for name, block in (parameters.get("datasets") or {}).items():
        d = P.parse(P.DatasetParams, block, f"datasets.{name}")
        P.parse(P.TrainParams, {**train, **d.train}, f"train (with datasets.{name}.train)")
        for mblock in (parameters.get("methods") or {}).values():
            _validate_run(mblock, block, train, d)
        if "translation" in parameters:
            P.translation_for(parameters["translation"], d)
        if "editing" in parameters or d.editing:
            editing_for(parameters.get("editing"), block)


def _validate_run(method: dict[str, Any], dataset: dict[str, Any], train: dict[str, Any],
                  d: P.DatasetParams) -> None:
    """The run's merged settings (training, and the loss built from its
    hyperparameters on the default schedule), each error naming its keys."""
    from diffusion_transfer.core.methods import build_method
    from diffusion_transfer.core.schedule import make_schedule
    from diffusion_transfer.pipelines.finetune.nodes import resolve_run

    try:
        run = resolve_run(method, dataset, train)
    except ValueError as err:
        if isinstance(err, P.InvalidParametersError):
            raise
        raise P.InvalidParametersError(f"Invalid parameters in 'datasets.{d.name}': {err}") from None
    where = f"methods.{run['method']} (with datasets.{d.name}.method_overrides)"
    try:
        build_method(run["method"], run["hyperparameters"], make_schedule())
    except (TypeError, ValueError) as err:
        raise P.InvalidParametersError(f"Invalid parameters in '{where}': {err}") from None


class ValidateParametersHook:
    @hook_impl
    def after_context_created(self, context) -> None:
        self._context = context  # (pipelines follow the context's config: config.ProjectConfigLoader)

    @hook_impl
    def after_catalog_created(self, catalog, parameters: dict[str, Any]) -> None:
        """Datasets and source models declared as paths become catalog entries."""
        from diffusion_transfer.project.declared import declarations, path_datasets

        # Kedro passes the catalog's parameter entries: the whole tree is under "parameters".
        for name, dataset in path_datasets(declarations(parameters.get("parameters", parameters))).items():
            catalog[name] = dataset

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        from diffusion_transfer.project.preflight import check_inputs, check_models
        from diffusion_transfer.project.preflight_folders import check_image_folders, check_outputs_writable

        params = self._context.params
        validate_parameters(params)
        check_inputs(pipeline, catalog, params)
        check_models(pipeline, catalog, params)
        check_image_folders(pipeline, catalog, params)
        check_outputs_writable(pipeline, catalog, params)

    @hook_impl
    def on_node_error(self, error: Exception, node) -> None:
        """The failing node, for the one-paragraph error of ``kedro run`` (cli.py)."""
        error.add_note(f"in node '{node.name}':")
