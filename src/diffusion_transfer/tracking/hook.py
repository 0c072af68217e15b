"""The project's tracking hook: kedro-mlflow's ``MlflowHook``, switched by
``tracking.enabled`` / ``DT_TRACKING``, plus this project's records.

settings.py turns off kedro-mlflow's own auto-registered hook and registers
this one, which hands every Kedro hook call to a ``MlflowHook`` only when
tracking is on; off, nothing of mlflow is imported. kedro-mlflow then does
what it does in any project (reads ``conf/<env>/mlflow.yml``, starts one
mlflow run per ``kedro run`` named after the pipeline, logs the ``params:``
inputs of every node, ends the run); this hook adds, after the nodes that
make them:

- the resolved run (``training_history.json``'s ``run``) as ``run.*`` parameters,
  the per-step loss terms as ``train.*`` metrics with their step, the samples
  during training as images over steps (``training_samples``);
- ``metrics.json``'s and ``translation_metrics.json``'s numbers as metrics;
- the report, its grids and JSON files as artifacts (the files themselves,
  under the names the report links);
- the fine-tuned model, once saved, as the run's mlflow model
  ``finetuned_model`` (pyfunc, tracking/pyfunc_model.py), ready to register,
  with the sampling settings and schedule the run samples it with.

The store: ``mlflow.yml``'s ``server.mlflow_tracking_uri``; null means
``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<project>/mlflow.db``.
A local store that cannot be written is found before mlflow is imported
(tracking/store.py): one warning, and the run goes on untracked; with
``DT_TRACKING=required`` that, or any other reason tracking cannot start,
stops the run with an ``Error:`` instead.
A study point (``python -m diffusion_transfer.studies``) sets ``DT_STUDY`` and
``DT_STUDY_POINT``: its run goes to the experiment ``study_<name>``, named and
tagged after the point.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl

from diffusion_transfer.core.provenance import environment_record
from diffusion_transfer.pipelines.training_samples import load_rows
from diffusion_transfer.project.declared import supplied_conf
from diffusion_transfer.project.schema import InvalidParametersError, SamplingParams
from diffusion_transfer.tracking import records
from diffusion_transfer.tracking.logger import RunLogger
from diffusion_transfer.tracking.store import DEFAULT_STORE, tracking_uri, unwritable_store

log = logging.getLogger(__name__)

ENV_SWITCH = "DT_TRACKING"
STUDY_ENV, POINT_ENV = "DT_STUDY", "DT_STUDY_POINT"
_OFF, _ON, _REQUIRED = ("0", "off", "false", "no"), ("1", "on", "true", "yes"), "required"
_MLFLOW_PATTERNS = ["mlflow*", "mlflow*/**", "**/mlflow*"]  # kedro-mlflow's, for conf/<env>/mlflow.yml


def tracking_enabled(parameters: dict[str, Any], runtime_params: dict[str, Any] | None = None) -> bool:
    """``DT_TRACKING`` (on/off/required) when set, else ``tracking.enabled``
    (runtime ``--params`` first, then conf; default on)."""
    env = os.environ.get(ENV_SWITCH, "").strip().lower()
    if env in _OFF or env in _ON or env == _REQUIRED:
        return env not in _OFF
    if env:
        raise InvalidParametersError(f"{ENV_SWITCH}={env!r}: use on, off or required (or leave it unset for "
                                     "'tracking.enabled')")
    for source in (runtime_params or {}, parameters):
        block = source.get("tracking")
        if block is None:
            continue
        enabled = block.get("enabled", True) if isinstance(block, dict) else block
        if not isinstance(enabled, bool):
            raise InvalidParametersError(f"Invalid parameters in 'tracking.enabled': expected true or false, "
                                         f"got {enabled!r}")
        return enabled
    return True


def model_logging_enabled(parameters: dict[str, Any], runtime_params: dict[str, Any] | None = None) -> bool:
    """``tracking.log_model`` (runtime ``--params`` first, then conf; default on):
    whether a tracked run logs its fine-tuned model folder as an mlflow model."""
    for source in (runtime_params or {}, parameters):
        block = source.get("tracking")
        if isinstance(block, dict) and "log_model" in block:
            if not isinstance(block["log_model"], bool):
                raise InvalidParametersError("Invalid parameters in 'tracking.log_model': expected true or false, "
                                             f"got {block['log_model']!r}")
            return block["log_model"]
    return True


def tracking_required() -> bool:
    """``DT_TRACKING=required``: a run that cannot be tracked stops before it starts."""
    return os.environ.get(ENV_SWITCH, "").strip().lower() == _REQUIRED


def configured_uri(loader) -> str | None:
    """``server.mlflow_tracking_uri`` of the environment's mlflow.yml (None: unset, or no mlflow.yml)."""
    try:
        if "mlflow" not in loader.config_patterns:
            loader.config_patterns.update({"mlflow": _MLFLOW_PATTERNS})
        server = (loader["mlflow"] or {}).get("server") or {}
    except (MissingConfigException, AttributeError, KeyError):
        return None  # kedro-mlflow's defaults then
    return server.get("mlflow_tracking_uri")


def _untracked(reason: str) -> None:
    """Tracking cannot start: an Error: with DT_TRACKING=required, else one warning."""
    if tracking_required():
        raise InvalidParametersError(f"{ENV_SWITCH}=required but mlflow tracking cannot start: {reason}. "
                                     f"Fix that, or run with {ENV_SWITCH}=on (goes on untracked) or off")
    log.warning("mlflow tracking is off for this run: %s", reason)


def study_tags() -> dict[str, str]:
    """The study and point of a study run (set by the study runner), else empty."""
    study, point = os.environ.get(STUDY_ENV), os.environ.get(POINT_ENV)
    return {"study": study, "study_point": point or ""} if study else {}


def respect_do_not_track() -> None:
    """mlflow's usage telemetry off when ``DO_NOT_TRACK`` is set as this project
    sets it (``1``; mlflow itself only reads ``true``), before mlflow is imported."""
    if os.environ.get("DO_NOT_TRACK", "").strip().lower() in _ON:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@contextlib.contextmanager
def default_store(project_path: Path) -> Iterator[None]:
    """``MLFLOW_TRACKING_URI`` = the project's SQLite store while kedro-mlflow
    reads it (only when unset: a user's variable wins; mlflow.yml's uri wins over both)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        yield
        return
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(Path(project_path) / DEFAULT_STORE).as_posix()}"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def _split(dataset_name: str) -> tuple[str | None, str]:
    namespace, _, leaf = dataset_name.rpartition(".")
    return namespace or None, leaf


class TrackingHook:
    """See the module docstring."""

    def __init__(self) -> None:
        # Registered under the name of kedro-mlflow's entry point ("mlflow_hook"), so that Kedro's
        # plugin loading skips it and mlflow is never imported while tracking is off (pluggy names a
        # plugin by its __name__; settings.py also lists kedro-mlflow in DISABLE_HOOKS_FOR_PLUGINS).
        self.__name__ = "mlflow_hook"
        self._reset()

    def _reset(self) -> None:
        self._mlflow: Any = None
        self._conf: dict[str, Any] = {}
        self._logger: RunLogger | None = None
        self._catalog: Any = None
        self._project = Path.cwd()
        self._sampling: dict[str, str] = {}
        self._log_model = True

    @property
    def active(self) -> bool:
        return self._logger is not None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._reset()
        self._project = Path(context.project_path)
        loader = context.config_loader
        self._conf = loader["parameters"]  # the whole tree, as conf gives it
        if not tracking_enabled(self._conf, getattr(loader, "runtime_params", None)):
            log.info("mlflow tracking is off (tracking.enabled / %s)", ENV_SWITCH)
            return
        self._log_model = model_logging_enabled(self._conf, getattr(loader, "runtime_params", None))
        uri = tracking_uri(configured_uri(loader), self._project)
        if (unwritable := unwritable_store(uri, self._project)) is not None:
            folder, why = unwritable
            return _untracked(f"its store {uri} cannot be written in {folder} ({why}); make that folder writable, "
                              "set server.mlflow_tracking_uri in conf/<env>/mlflow.yml (or MLFLOW_TRACKING_URI) "
                              f"to a writable store, or turn tracking off ({ENV_SWITCH}=off)")
        respect_do_not_track()
        try:
            from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
        except ImportError:
            return _untracked("kedro-mlflow is not installed (pip install -e .)")
        self._mlflow = MlflowHook()
        try:
            with default_store(self._project):
                self._mlflow.after_context_created(context)
        except Exception as err:  # noqa: BLE001 - a store that cannot be opened must not stop the run
            self._mlflow = None
            return _untracked(f"kedro-mlflow could not set up the store ({type(err).__name__}: {err}); "
                              "see conf/base/mlflow.yml and docs/TRACKING.md")
        study = study_tags()
        if study:
            config = self._mlflow.mlflow_config
            config.tracking.run.name = f"{study['study']}/{study['study_point']}"
            if not self._mlflow._already_active_mlflow:
                config.tracking.experiment.name = f"study_{study['study']}"
                config._set_experiment()  # kedro-mlflow 2.x: sets and stores the experiment

    @hook_impl
    def after_catalog_created(self, catalog, conf_catalog, conf_creds, parameters, save_version,
                              load_versions) -> None:
        self._catalog = catalog
        if self._mlflow is not None:
            self._mlflow.after_catalog_created(catalog, conf_catalog, conf_creds, parameters, save_version,
                                               load_versions)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self._mlflow is None:
            return
        self._mlflow.before_pipeline_run(run_params, pipeline, catalog)
        if not self._mlflow._is_mlflow_enabled or self._mlflow.run_id is None:
            return  # mlflow.yml's tracking.disable_tracking.pipelines lists this pipeline
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self._mlflow.mlflow_config.server.mlflow_tracking_uri)
        namespaces = {n.namespace.split(".")[0] for n in pipeline.nodes if n.namespace}
        tags = {**study_tags(), **{f"env.{k}": v for k, v in environment_record(self._project).items()}}
        self._logger = RunLogger(client, self._mlflow.run_id, namespaces, tags)
        self._sampling = _sampling_params(pipeline)
        for key, value in tags.items():
            client.set_tag(self._mlflow.run_id, key, value)

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async) -> None:
        if self._mlflow is not None:
            # Nodes receive parameters resolved and typed (project/resolved.py); mlflow logs them as conf gives them.
            logged = {k: (_conf_value(self._conf, k[len("params:"):], v) if k.startswith("params:") else v)
                      for k, v in inputs.items()}
            self._mlflow.before_node_run(node, catalog, logged, is_async)

    @hook_impl
    def after_node_run(self, node, outputs: dict[str, Any]) -> None:
        if not self.active:
            return
        for name, data in outputs.items():
            namespace, leaf = _split(name)
            if leaf == "training_history" and isinstance(data, dict):
                self._log_training(namespace, data)
            elif leaf == "metrics" and isinstance(data, dict):
                self._logger.log_metrics(namespace, [(k, v, 0) for k, v in records.evaluation_metrics(data).items()])
            elif leaf == "translation_metrics" and isinstance(data, dict):
                self._logger.log_metrics(namespace, [(k, v, 0) for k, v in records.translation_metrics(data).items()])

    def _log_training(self, namespace: str | None, history: dict[str, Any]) -> None:
        if "run" in history:
            self._logger.log_params(namespace, records.run_params(history["run"]))
        self._logger.log_metrics(namespace, records.loss_metrics(history.get("history", [])))
        samples = history.get("training_samples")
        if samples:
            images = records.training_sample_images(load_rows(samples["file"]))
            self._logger.log_images(namespace, "training_samples", images)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        if not self.active:
            return
        namespace, leaf = _split(dataset_name)
        if namespace is not None and leaf == records.RUN_MODEL:
            if self._log_model and (path := self._saved_path(dataset_name)) is not None:
                self._logger.log_model(namespace, path, data, self._model_config(namespace))
            return
        if namespace is not None and leaf in records.RUN_ARTIFACTS:
            target = namespace
        elif namespace is None and dataset_name.endswith(records.PIPELINE_ARTIFACT_SUFFIXES):
            target = None
        else:
            return
        path = self._saved_path(dataset_name)
        if path is not None:
            self._logger.log_file(target, path)

    def _model_config(self, namespace: str) -> dict[str, Any]:
        """What the run samples its fine-tuned model with, as conf gives it: the
        sampling block of its ``sample_finetuned`` node and the ``schedule`` overrides."""
        sampling = _conf_value(self._conf, self._sampling.get(namespace, "sampling"), None)
        sampling = {k: v for k, v in (sampling if isinstance(sampling, dict) else {}).items()
                    if k in SamplingParams.model_fields}
        schedule = self._conf.get("schedule")
        return {"sampling": sampling,
                "schedule": {k: v for k, v in (schedule if isinstance(schedule, dict) else {}).items()
                             if v is not None}}

    def _saved_path(self, dataset_name: str) -> Path | None:
        """Where the catalog wrote ``dataset_name`` (its ``filepath`` or ``path``)."""
        resolver = getattr(self._catalog, "config_resolver", None)
        if resolver is None:
            return None
        config = resolver.config.get(dataset_name) or resolver.resolve_pattern(dataset_name) or {}
        where = config.get("filepath") or config.get("path")
        if not where:
            return None
        path = Path(str(where).removeprefix("file://"))
        return path if path.is_absolute() else self._project / path

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self._logger is not None:
            self._logger.close("FINISHED")
        if self._mlflow is not None:
            self._mlflow.after_pipeline_run(run_params, pipeline, catalog)

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        if self._logger is not None:
            self._logger.close("FAILED")
        if self._mlflow is not None:
            self._mlflow.on_pipeline_error(error, run_params, pipeline, catalog)


def _sampling_params(pipeline) -> dict[str, str]:
    """Per run namespace, the sampling parameter (without ``params:``) of the
    nodes that sample its fine-tuned model (``sample_finetuned``)."""
    found: dict[str, str] = {}
    suffix = f".{records.RUN_MODEL}"
    for node in pipeline.nodes:
        runs = [name[: -len(suffix)] for name in node.inputs if name.endswith(suffix)]
        params = [name[len("params:"):] for name in node.inputs
                  if name.startswith("params:") and name.rpartition(".")[2].removeprefix("params:") == "sampling"]
        for run in runs if params else []:
            found.setdefault(run, params[0])
    return found


def _conf_value(conf: dict[str, Any], dotted: str, value: Any) -> Any:
    """The conf value at ``a.b.c``; for a parameter the hook supplies (a source's
    sampling settings, ``declared.sampling_param``) the merged block conf gives."""
    supplied = supplied_conf(conf, dotted)
    if supplied is not None:
        return supplied
    node: Any = conf
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return value
        node = node[key]
    return node
