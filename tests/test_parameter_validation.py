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
    from diffusion_transfer.project.resolved import resolve_parameters

    resolve_parameters(_base_params())


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
    from diffusion_transfer.project.resolved import resolve_parameters
    from diffusion_transfer.project.schema import InvalidParametersError

    params = _base_params()
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(InvalidParametersError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        resolve_parameters(params)


def test_per_dataset_classifier_overrides_are_validated():
    from diffusion_transfer.project.resolved import resolve_parameters
    from diffusion_transfer.project.schema import InvalidParametersError

    params = _base_params()
    params["classifier"]["datasets"] = {"aahq": {"train": {"steps": 0}}}
    with pytest.raises(InvalidParametersError, match="classifier.datasets.aahq"):
        resolve_parameters(params)


def test_parameters_reach_the_hook_as_conf_gives_them_and_are_validated_once(monkeypatch):
    """Kedro's own context would build the pydantic models node signatures name
    (``sampling``: SamplingParams) before any hook runs; the project's context
    leaves them as conf gives them, so the one validation (resolved.py) names
    the YAML key."""
    from kedro.framework.context import KedroContext
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from diffusion_transfer.project.resolved import resolve_parameters
    from diffusion_transfer.project.schema import InvalidParametersError, SamplingParams

    monkeypatch.chdir(ROOT)
    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env="smoke", runtime_params={"sampling": {"steps": 0}}) as session:
        context = session.load_context()
        assert isinstance(context.params["sampling"], dict) and context.params["sampling"]["steps"] == 0
        with pytest.raises(Exception, match="SamplingParams"):  # what Kedro's own context would have said
            KedroContext.params.fget(context)
        with pytest.raises(InvalidParametersError, match=r"sampling\.steps: Input should be greater than or equal to 1"):
            resolve_parameters(context.params)
    ok = resolve_parameters(_base_params())
    assert isinstance(ok.blocks["sampling"], SamplingParams) and ok.runs["sdft_aahq"].hyperparameters["gamma_aux"] == 50.0
