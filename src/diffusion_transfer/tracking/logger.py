"""Where a run's records go: the kedro-mlflow run of the ``kedro run``, or,
when the pipeline holds several method runs (``compare_<dataset>``), one
nested mlflow run per method namespace (``sdft_aahq``, ``naive_aahq`` ...).

Every call goes through ``MlflowClient`` with an explicit run id (no active
run needed, so nothing depends on which thread a node ran in). A failing write
is a warning, not a failed training run: the files under ``data/`` stay the
record of the run.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

_MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000


def _warn_on_failure(method: Callable) -> Callable:
    @functools.wraps(method)
    def guarded(self: "RunLogger", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must not fail a finished node
            log.warning("mlflow tracking: %s failed (%s: %s); the run's files are unaffected",
                        method.__name__, type(err).__name__, err)
            return None
    return guarded


class RunLogger:
    """Logs to ``parent_run_id``, or to a child run per namespace when the
    pipeline has more than one (``namespaces``)."""

    def __init__(self, client: Any, parent_run_id: str, namespaces: Iterable[str], tags: dict[str, str]) -> None:
        self.client, self.parent = client, parent_run_id
        self.namespaces = set(namespaces)
        self.tags = dict(tags)
        self.children: dict[str, str] = {}

    def run_for(self, namespace: str | None) -> str:
        """The run id that ``namespace``'s records go to."""
        if namespace is None or len(self.namespaces) <= 1 or namespace not in self.namespaces:
            return self.parent
        if namespace not in self.children:
            experiment = self.client.get_run(self.parent).info.experiment_id
            tags = {**self.tags, "mlflow.parentRunId": self.parent, "kedro.namespace": namespace}
            self.children[namespace] = self.client.create_run(experiment, tags=tags, run_name=namespace).info.run_id
        return self.children[namespace]

    @_warn_on_failure
    def log_params(self, namespace: str | None, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        run_id = self.run_for(namespace)
        items = [Param(k, str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i : i + _PARAMS_PER_BATCH])

    @_warn_on_failure
    def log_metrics(self, namespace: str | None, values: list[tuple[str, float, int]]) -> None:
        """(key, value, step) triples, in batches."""
        from mlflow.entities import Metric

        run_id = self.run_for(namespace)
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(s)) for k, v, s in values]
        for i in range(0, len(items), _METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + _METRICS_PER_BATCH])

    @_warn_on_failure
    def log_images(self, namespace: str | None, key: str, images: list[tuple[int, Any]]) -> None:
        """One image per step under ``key`` (mlflow's image-over-steps view)."""
        run_id = self.run_for(namespace)
        for step, image in images:
            self.client.log_image(run_id, image, key=key, step=int(step))

    @_warn_on_failure
    def log_file(self, namespace: str | None, path: Path) -> None:
        """A file (or every file of a folder) as artifacts of the run."""
        run_id = self.run_for(namespace)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path=path.name)
        elif path.is_file():
            self.client.log_artifact(run_id, str(path))

    @_warn_on_failure
    def log_model(self, namespace: str | None, folder: Path, model: Any, config: dict[str, Any]) -> None:
        """The fine-tuned ``model`` saved in ``folder``, as the run's mlflow
        model ``finetuned_model`` (pyfunc; tracking/pyfunc_model.py)."""
        # deferred: mlflow.pyfunc and the samplers, only when a run saves a model with tracking on
        from diffusion_transfer.tracking.pyfunc_model import log_finetuned_model

        if folder.is_dir():
            log_finetuned_model(self.client, self.run_for(namespace), folder, model, config)

    @_warn_on_failure
    def close(self, status: str) -> None:
        """End the child runs (the parent is kedro-mlflow's to end)."""
        for run_id in self.children.values():
            self.client.set_terminated(run_id, status)
