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
    (``evaluation``: EvaluationParams) before any hook runs; the project's context
    leaves them as conf gives them, so the one validation (resolved.py) names
    the YAML key."""
    from kedro.framework.context import KedroContext
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from diffusion_transfer.project.resolved import resolve_parameters
    from diffusion_transfer.project.schema import EvaluationParams, InvalidParametersError, SamplingParams

    monkeypatch.chdir(ROOT)
    bootstrap_project(ROOT)
    runtime = {"evaluation": {"lpips_pairs": 0}}
    with KedroSession.create(project_path=ROOT, env="smoke", runtime_params=runtime) as session:
        context = session.load_context()
        assert isinstance(context.params["evaluation"], dict) and context.params["evaluation"]["lpips_pairs"] == 0
        with pytest.raises(Exception, match="EvaluationParams"):  # what Kedro's own context would have said
            KedroContext.params.fget(context)
        with pytest.raises(InvalidParametersError, match=r"evaluation\.lpips_pairs: Input should be greater than"):
            resolve_parameters(context.params)
    ok = resolve_parameters(_base_params())
    assert isinstance(ok.blocks["evaluation"], EvaluationParams) and isinstance(ok.blocks["sampling"], SamplingParams)
    assert ok.runs["sdft_aahq"].hyperparameters["gamma_aux"] == 50.0


def test_a_sources_sampling_block_overrides_the_environments_for_its_models_only():
    from diffusion_transfer.project.registry import register_pipelines
    from diffusion_transfer.project.resolved import resolve_parameters, typed_parameters
    from diffusion_transfer.project.schema import InvalidParametersError

    params = _base_params()
    params["sources"]["faceworld_latent"]["sampling"] = {"steps": 200}
    typed = typed_parameters(resolve_parameters(params))
    latent, ffhq = typed["params:sources.faceworld_latent.sampling"], typed["params:sources.ffhq.sampling"]
    assert (latent.steps, ffhq.steps) == (200, params["sampling"]["steps"])
    assert latent.n_samples == ffhq.n_samples == params["sampling"]["n_samples"]  # merged key by key
    # every sampling node of a latent run, its source's samples included, reads the source's block
    pipelines = register_pipelines(params)
    for name, source in (("anl_lsketches_25", "faceworld_latent"), ("naive_metfaces", "ffhq")):
        readers = [n for n in pipelines[name].nodes if any(i.endswith("sampling") for i in n.inputs)]
        names = [n.name for n in readers]
        assert all(any(x.endswith(end) for x in names) for end in ("make_noise_bank", "sample_source", "sample_finetuned"))
        for n in readers:
            assert f"params:sources.{source}.sampling" in n.inputs and "params:sampling" not in n.inputs, n.name
    params["sources"]["faceworld_latent"]["sampling"] = {"steps": 0}
    with pytest.raises(InvalidParametersError,
                       match=r"sampling \(with sources\.faceworld_latent\.sampling\)\.steps: Input should be greater"):
        resolve_parameters(params)
