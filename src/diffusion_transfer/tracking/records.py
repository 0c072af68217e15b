"""What a run logs to mlflow, as plain values (no mlflow here): the resolved
run as parameters, the per-step loss terms, the final metrics, the
translation table and the samples during training.

Keys follow the project's JSON outputs: ``fid``, ``kid_x1e3``,
``retention_of_absent.mean`` are ``metrics.json``'s ``models.finetuned``
entries (the source model's are ``source.fid`` ...), ``train.<term>`` the
training history's records, ``translation.<method>.<metric>`` the rows of
``translation_metrics.json``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterator

import numpy as np

#: Catalog entries of a run (``<run>.<name>``) logged as artifacts, under the file names the report links.
RUN_ARTIFACTS = ("report", "sample_grid", "loss_curve", "translation_grid", "training_samples", "prompt_grid",
                 "metrics", "translation_metrics", "training_history", "edit_metrics", "edit_grids")
#: The catalog entry of a run's fine-tuned model (``<run>.finetuned_model``), logged as an mlflow model.
RUN_MODEL = "finetuned_model"
#: Entries outside any run (``<dataset>_comparison_report`` ...) logged on the kedro run itself.
PIPELINE_ARTIFACT_SUFFIXES = ("_comparison_report", "_comparison", "_curation_summary", "_curation_sheet")
#: Detail blocks of metrics.json left out of the metrics (per-cluster lists, not one number).
_SKIPPED_METRIC_BLOCKS = ("intra_lpips_detail",)
_MLFLOW_KEY = re.compile(r"[^\w\-. /]")


def mlflow_key(key: str) -> str:
    """``key`` with the characters mlflow rejects in names replaced by ``_``."""
    return _MLFLOW_KEY.sub("_", key)


def flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) of a nested mapping; lists stay leaves."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, tree


def run_params(run: dict[str, Any], prefix: str = "run") -> dict[str, str]:
    """The resolved run (``training_history.json``'s ``run``: method, dataset,
    hyperparameters after presets, merged train settings, samples) as mlflow
    parameters: dotted keys, values as text (lists and None as JSON)."""
    out = {}
    for key, value in flatten(run, prefix):
        text = value if isinstance(value, str) else json.dumps(value)
        out[mlflow_key(key)] = text
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def loss_metrics(history: list[dict[str, float]]) -> list[tuple[str, float, int]]:
    """(``train.<term>``, value, step) of every history record: the loss terms
    averaged over the logging interval, ``grad_norm``, ``lr``, ``sec_per_step``."""
    out = []
    for record in history:
        step = int(record["step"])
        for key, value in record.items():
            number = _number(value)
            if key != "step" and number is not None:
                out.append((mlflow_key(f"train.{key}"), number, step))
    return out


def evaluation_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """``metrics.json``'s numbers: the fine-tuned model's unprefixed (``fid``,
    ``kid_x1e3``, ``lpips_src_trg``, ``intra_lpips``, ``face_rate``,
    ``retention.<attr>``, ``retention_of_absent.<attr>``, ``coverage.*``), the
    source model's under ``source.``."""
    out = {}
    for model, prefix in (("finetuned", ""), ("source", "source")):
        block = {k: v for k, v in (metrics.get("models", {}).get(model) or {}).items()
                 if k not in _SKIPPED_METRIC_BLOCKS}
        for key, value in flatten(block, prefix):
            number = _number(value)
            if number is not None:
                out[mlflow_key(key)] = number
    return out


def translation_metrics(table: dict[str, Any]) -> dict[str, float]:
    """``translation_metrics.json``'s rows as ``translation.<method>.<metric>``."""
    out = {}
    for method, row in (table.get("rows") or {}).items():
        for key, value in flatten(row, f"translation.{method}"):
            number = _number(value)
            if number is not None:
                out[mlflow_key(key)] = number
    return out


def training_sample_images(rows: dict[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
    """(step, image) per sampled step: the source model's row above the model's
    row at that step, same noise per column (uint8 ``(2H, nW, 3)``)."""
    if "source" not in rows:
        return []
    source = np.concatenate(list(rows["source"]), axis=1)
    out = []
    for key in sorted(k for k in rows if k.startswith("step_")):
        current = np.concatenate(list(rows[key]), axis=1)
        out.append((int(key[5:]), np.concatenate([source, current], axis=0)))
    return out
