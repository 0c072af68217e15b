"""A study as declared in conf (``studies.<name>``, parameters_studies.yml)
and the points of its grid.

::

    studies:
      weighting_aahq:
        pipeline: sdft_aahq                 # a method run: <method>_<dataset>
        base: {train.steps: 600}            # overrides shared by every point (dotted keys)
        outputs: [metrics]                  # optional: only what metrics.json needs (no translation)
        reuse_runs_from: [every_method_aahq]  # optional: start from their finished runs (studies/reuse.py)
        grid:                               # one point per combination, in this order
          methods.sdft.weighting: [constant, min_snr, p2]
          gamma:                            # an axis of override sets: each value is a mapping
            - {methods.sdft.gamma_distill: 3, methods.sdft.gamma_aux: 3}
            - {methods.sdft.gamma_distill: 50, methods.sdft.gamma_aux: 50}

The grid key ``pipeline`` varies the pipeline itself (e.g. naive_aahq and
sdft_aahq). A point's id names its grid values (``weighting-constant``) and
ends with a hash of all its overrides, so editing a study never mistakes an
old point for a new one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from diffusion_transfer.project.schema import InvalidParametersError, StudyParams, parse

PIPELINE_AXIS = "pipeline"
#: The grid axis of seed replicates (studies/replicates.py summarises over it).
REPLICATE_AXIS = "replicate"
EDIT_PREFIX = "edit_"


def namespace_of(pipeline: str) -> str:
    """``sdft_aahq`` -> ``sdft_aahq``; ``edit_source_aahq`` -> ``source_aahq``."""
    return pipeline.removeprefix(EDIT_PREFIX)


@dataclass(frozen=True)
class Point:
    """One run of a study: its pipeline and its overrides (dotted keys)."""

    study: str
    pipeline: str
    overrides: dict[str, Any]
    labels: dict[str, Any] = field(default_factory=dict)  # grid axis -> the value shown in tables
    outputs: tuple[str, ...] | None = None  # the run's outputs to compute (None: the whole pipeline)
    reuse_from: tuple[str, ...] = ()  # studies whose finished run of the same method run it starts from

    @property
    def id(self) -> str:
        named = "_".join(f"{_short(axis)}-{slug(value)}" for axis, value in self.labels.items())
        digest = hashlib.sha256(json.dumps([self.pipeline, self.overrides], sort_keys=True,
                                           default=str).encode()).hexdigest()[:6]
        return f"{named}_{digest}" if named else digest

    @property
    def namespace(self) -> str:
        """The run's namespace (and reporting folder): the pipeline's name, or
        for an edit run ``edit_<run>`` the run it edits (``source_aahq``)."""
        return namespace_of(self.pipeline)

    @property
    def is_edit(self) -> bool:
        return self.pipeline.startswith(EDIT_PREFIX)

    def run_pipelines(self, registered: set[str]) -> list[str]:
        """The pipelines the point's run combines: an edit point's method run
        first when it is a registered pipeline (``sdft_aahq`` for
        ``edit_sdft_aahq``; the source model's is not: its edits need no
        training), so a point trains the model it edits unless it reuses one."""
        if self.is_edit and self.namespace in registered:
            return [self.namespace, self.pipeline]
        return [self.pipeline]

    def to_outputs(self) -> list[str] | None:
        """The catalog names Kedro runs up to (``to_outputs``), or None for the whole pipeline."""
        return [f"{self.namespace}.{o}" for o in self.outputs] if self.outputs else None

    def runtime_params(self) -> dict[str, Any]:
        """The overrides as the nested mapping Kedro merges into the parameters."""
        return nested(self.overrides)


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InvalidParametersError(f"override {key!r} goes inside {part!r}, which another override "
                                             f"sets to a value")
        node[leaf] = value
    return out


def _short(axis: str) -> str:
    return axis.rsplit(".", 1)[-1]


def slug(value: Any) -> str:
    if isinstance(value, dict):
        value = "-".join(str(v) for v in value.values())
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(value)).strip("-") or "x"


def parse_study(name: str, block: Any) -> StudyParams:
    return parse(StudyParams, block, f"studies.{name}")


def study_points(name: str, block: Any, pipelines: set[str] | None = None) -> list[Point]:
    """The points of ``studies.<name>``, in grid order; with ``pipelines``
    (the registered names) an unknown pipeline names the key."""
    study = parse_study(name, block)
    axes = list(study.grid.items())
    if study.replicate_axis():
        if REPLICATE_AXIS in study.grid:
            raise InvalidParametersError(f"Invalid parameters in 'studies.{name}': a grid axis "
                                         f"'{REPLICATE_AXIS}' and 'replicates' / 'sampling_seeds' both make "
                                         "the replicates; keep one")
        axes.insert(0, (REPLICATE_AXIS, study.replicate_axis()))
    if study.pipeline is None and PIPELINE_AXIS not in study.grid:
        raise InvalidParametersError(f"Invalid parameters in 'studies.{name}': set 'pipeline' or a grid axis "
                                     f"'pipeline'")
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        overrides, labels, pipeline = dict(study.base), {}, study.pipeline
        for (axis, _), value in zip(axes, combo):
            labels[axis] = value
            if axis == PIPELINE_AXIS:
                pipeline = value
            elif isinstance(value, dict):
                overrides.update(value)
            else:
                overrides[axis] = value
        where = f"studies.{name}." + ("grid.pipeline" if PIPELINE_AXIS in study.grid else "pipeline")
        if pipelines is not None and pipeline not in pipelines:
            raise InvalidParametersError(f"Invalid parameters in '{where}': no pipeline {pipeline!r} "
                                         f"(kedro registry list shows them)")
        try:
            nested(overrides)  # conflicting keys fail here, naming them
        except InvalidParametersError as err:
            raise InvalidParametersError(f"Invalid parameters in 'studies.{name}': {err}") from None
        points.append(Point(name, str(pipeline), overrides, labels,
                            tuple(study.outputs) if study.outputs else None, tuple(study.reuse_runs_from)))
    ids = [p.id for p in points]
    if len(set(ids)) != len(ids):
        raise InvalidParametersError(f"Invalid parameters in 'studies.{name}.grid': two points have the same "
                                     f"overrides")
    return points
