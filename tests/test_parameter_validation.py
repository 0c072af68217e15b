"""Parameter validation: conf/base's parameters pass, and a bad value, anywhere
it can be set, is rejected naming the parameter."""

from __future__ import annotations

import json

import pytest
import yaml

from tests._pipeline_helpers import ROOT


def _base_params() -> dict:
    params: dict = {}
    for f in sorted((ROOT / "conf" / "base").glob("parameters*.yml")):
        params.update(yaml.safe_load(f.read_text()))
    return json.loads(json.dumps(params))  # YAML anchors share dicts; Kedro's loader gives each its own


def test_base_parameters_validate():
    from diffusion_transfer.project.resolved import resolve_parameters as validate_parameters

    validate_parameters(_base_params())


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (("train", "batch_size"), 0, "train (with datasets.aahq.train).batch_size"),
        (("train", "lr"), float("inf"), "train (with datasets.aahq.train).lr"),
        (("sampling", "sampler"), "euler", "sampling.sampler"),
        (("methods", "sdft", "lambda_distill"), -1.0, "lambda_distill"),
        (("methods", "sdft", "weighting"), "cubic", "weighting"),
        (("datasets", "aahq", "curation", "top_n"), None, "datasets.aahq.curation"),
        (("datasets", "aahq", "source"), "lsun", "datasets.aahq.source"),
        (("datasets", "aahq", "kind"), "many_shot", "datasets.aahq.kind"),
        (("methods", "sdft", "preset"), "cats", "preset must be one of"),
        (("schedule", "prediction_type"), "flow", "schedule.prediction_type"),
        (("methods", "a3ft", "train", "lr"), -1.0, "train (with methods.a3ft.train and datasets.aahq.train).lr"),
        (("methods", "anl", "condition", "mask_rate"), 1.5, "methods.anl.condition.mask_rate"),
        (("methods", "a3ft", "scaling_hidden"), 0, "scaling_hidden"),
        (("datasets", "sketches", "method_overrides"), {"tan": {"train": {"steps": 0}}},
         "train (with methods.tan.train and datasets.sketches.train and "
         "datasets.sketches.method_overrides.tan.train).steps"),
        (("editing", "t_boost"), 0.9, "editing"),
        (("datasets", "aahq", "editing"), {"n_test": 0}, "editing (with datasets.aahq.editing).n_test"),
    ],
)
def test_invalid_parameters_are_rejected_naming_the_parameter(path, value, expected):
    from diffusion_transfer.project.resolved import resolve_parameters as validate_parameters
    from diffusion_transfer.project.schema import InvalidParametersError

    params = _base_params()
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(InvalidParametersError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        validate_parameters(params)


def test_per_dataset_classifier_overrides_are_validated():
    from diffusion_transfer.project.resolved import resolve_parameters as validate_parameters
    from diffusion_transfer.project.schema import InvalidParametersError

    params = _base_params()
    params["classifier"]["datasets"] = {"aahq": {"train": {"steps": 0}}}
    with pytest.raises(InvalidParametersError, match="classifier.datasets.aahq"):
        validate_parameters(params)
