"""The pre-run check: before any node runs, every file the pipeline reads
from outside (datasets, model weights, metric weights) must be there.

Each missing one is listed with where to put it and where it comes from, in
one message, so a paper-scale run never stops an hour in on the first
missing file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_METRIC_WEIGHTS = {
    "inception_path": "clean-fid's TorchScript Inception-v3 (inception-2015-12-05.pt), for FID/KID",
    "lpips_backbone_weights": "torchvision's AlexNet ImageNet weights (alexnet-owt-7be5be79.pth), LPIPS's backbone",
}


class MissingInputsError(RuntimeError):
    """Raised before any compute, listing every missing input."""


def find_missing(pipeline, catalog, params: dict[str, Any]) -> list[str]:
    """One line per missing external input of ``pipeline``: datasets whose
    Kedro dataset knows how to say what is missing (``missing()``), and the
    metric weights configured by path under ``evaluation``."""
    problems = []
    for name in sorted(pipeline.inputs()):
        if name.startswith("params:") or name == "parameters":
            continue
        dataset = catalog.get(name)
        check = getattr(dataset, "missing", None)
        why = check() if callable(check) else None
        if why:
            problems.append(f"{name}: {why}")
    uses_evaluation = any(i == "params:evaluation" for n in pipeline.nodes for i in n.inputs)
    evaluation = params.get("evaluation") or {}
    if uses_evaluation:
        for key, what in _METRIC_WEIGHTS.items():
            path = evaluation.get(key)
            if path and not Path(path).is_file():
                problems.append(f"evaluation.{key}: {path} does not exist; put {what} there")
    return problems


def check_inputs(pipeline, catalog, params: dict[str, Any]) -> None:
    problems = find_missing(pipeline, catalog, params)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise MissingInputsError(
            f"{len(problems)} input(s) of this run are missing; nothing was computed. Put each file or folder "
            f"where it says (README, 'Running at paper scale'), then run again:\n{lines}")
