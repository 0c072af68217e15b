"""Every parameter key is known (issue 32): a misspelt key at any level, a key
of an older layout or a mapping written as a list stops the run before
compute, naming the file, the key path and the fix; a name Kedro cannot use
is refused where it is declared, and the other datasets keep their pipelines."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests._pipeline_helpers import ROOT, _scratch_project
from tests.test_failures import error_paragraph
from tests.test_own_data import ENV, KEDRO, _listed, kedro


def _base_params() -> dict:
    params: dict = {}
    for f in sorted((ROOT / "conf" / "base").glob("parameters*.yml")):
        for key, value in yaml.safe_load(f.read_text()).items():
            params[key] = {**params.get(key, {}), **value}
    return json.loads(json.dumps(params))  # YAML anchors share dicts; Kedro's loader gives each its own


@pytest.mark.parametrize("path, key, expected", [
    ((), "trian", "'trian': unknown top-level block; did you mean 'train'?"),
    (("train",), "stpes", "'train.stpes': unknown key; did you mean 'steps'?"),
    (("datasets", "aahq"), "fid_referense", "'datasets.aahq.fid_referense': unknown key; did you mean 'fid_reference'?"),
    (("datasets", "aahq", "curation"), "top_m", "'datasets.aahq.curation.top_m': unknown key; did you mean 'top_n'?"),
    (("datasets", "aahq", "method_overrides", "sdft", "train"), "lrr",
     "'datasets.aahq.method_overrides.sdft.train.lrr': unknown key; did you mean 'lr'?"),
    (("datasets", "aahq", "translation", "sdedit"), "stepz",
     "'datasets.aahq.translation.sdedit.stepz': unknown key; did you mean 'steps'?"),
    (("sources", "ffhq"), "samplng", "'sources.ffhq.samplng': unknown key; did you mean 'sampling'?"),
    (("sources", "ffhq", "sampling"), "step", "'sources.ffhq.sampling.step': unknown key; did you mean 'steps'?"),
    (("methods", "anl", "condition"), "mask_rat", "'methods.anl.condition.mask_rat': unknown key; did you mean "
                                                  "'mask_rate'?"),
    (("methods", "sdft", "train"), "ema_decai", "'methods.sdft.train.ema_decai': unknown key; did you mean 'ema_decay'?"),
    (("classifier", "datasets", "aahq", "train"), "stepss",
     "'classifier.datasets.aahq.train.stepss': unknown key; did you mean 'steps'?"),
    (("evaluation",), "lpips_pair", "'evaluation.lpips_pair': unknown key; did you mean 'lpips_pairs'?"),
    (("tracking",), "enable", "'tracking.enable': unknown key; did you mean 'enabled'?"),
    (("studies", "anl_table1_lsketches"), "output", "'studies.anl_table1_lsketches.output': unknown key; did you "
                                                     "mean 'outputs'?"),
])
def test_a_misspelt_key_at_any_level_is_named_with_the_closest_known_one(path, key, expected):
    from diffusion_transfer.project.known_keys import unknown_key_problems
    from diffusion_transfer.project.resolved import resolve_parameters
    from diffusion_transfer.project.schema import InvalidParametersError

    params = _base_params()
    node = params
    for part in path:
        node = node.setdefault(part, {})
    node[key] = 1
    found = unknown_key_problems(params)
    assert len(found) == 1 and found[0].startswith(expected), found
    with pytest.raises(InvalidParametersError, match="unknown keys, which nothing would read") as err:
        resolve_parameters(params)
    assert expected in str(err.value)


def test_an_older_layout_names_the_new_place_and_the_user_block_is_free():
    from diffusion_transfer.project.known_keys import unknown_key_problems

    params = {**_base_params(), "curate": {"aahq": {"top_n": 5}}, "user": {"anything": {"goes": [1, 2]}}}
    assert unknown_key_problems(params) == [
        "'curate': an older layout: 'curate.<dataset>.<key>' is now 'datasets.<dataset>.curation.<key>'"]
    # a method's own hyperparameters are its constructor's to check (an unknown one names the method)
    params = {**_base_params(), "methods": {**_base_params()["methods"], "sdft": {"name": "sdft", "gamma_auxx": 1}}}
    assert unknown_key_problems(params) == []


@pytest.mark.parametrize("method, key, closest", [
    ("naive", "weightin", "weighting"), ("a3ft", "scaling_hiden", "scaling_hidden"), ("anl", "hidden_mul", "hidden_mult"),
    ("tan", "adversarial_step", "adversarial_steps"), ("sdft", "gama_aux", "gamma_aux"),
])
def test_a_misspelt_method_hyperparameter_names_the_method_and_the_closest_one(method, key, closest):
    from diffusion_transfer.project.resolved import resolve_parameters
    from diffusion_transfer.project.schema import InvalidParametersError

    params = _base_params()
    params["methods"][method][key] = 1
    with pytest.raises(InvalidParametersError, match=f"Invalid parameters in 'methods.{method} ") as err:
        resolve_parameters(params)
    assert f"did you mean '{closest}'?" in str(err.value) or (  # SDFT's own check lists what it allows
        f"unknown sdft parameter(s) ['{key}']; allowed: [" in str(err.value) and f"'{closest}'" in str(err.value))


def test_a_mapping_written_as_a_list_says_what_was_expected():
    from diffusion_transfer.project.known_keys import unknown_key_problems

    found = unknown_key_problems({"datasets": ["aahq", "metfaces"], "sampling": [1, 2]})
    assert found == ["'datasets': expected a mapping of dataset names (name: {...}), found a list; write each item "
                     "as '<name>: {...}' under it",
                     "'sampling': expected a mapping of settings (key: value), found a list"]


@pytest.mark.parametrize("env", sorted(p.name for p in (ROOT / "conf").iterdir()
                                       if p.is_dir() and any(p.glob("parameters*.yml"))))
def test_every_parameters_file_shipped_in_conf_passes_the_strict_check(env):
    from diffusion_transfer.project.config import LOADER_ARGS, ProjectConfigLoader
    from diffusion_transfer.project.known_keys import unknown_key_problems

    loader = ProjectConfigLoader(conf_source=str(ROOT / "conf"), env=env, **LOADER_ARGS)
    assert unknown_key_problems(loader["parameters"]) == []


def test_a_name_kedro_cannot_use_is_refused_and_the_other_datasets_keep_their_pipelines():
    from diffusion_transfer.project.registry import register_pipelines
    from diffusion_transfer.project.resolved import resolve_parameters

    params = _base_params()
    params["datasets"]["my data/v2"] = {"images": "data/01_raw/mine", "source": "ffhq"}
    pipelines = register_pipelines(params)
    assert "sdft_aahq" in pipelines and not any("my data" in name for name in pipelines)
    resolved = resolve_parameters(params)
    assert "sdft_aahq" in resolved.runs and "my data/v2" not in resolved.datasets
    assert resolved.declared.refused == {"datasets.my data/v2": (
        "'datasets.my data/v2' is left out: a name may hold only letters, digits and '_' (it becomes Kedro node "
        "and pipeline names such as sdft_<name>); rename the key, e.g. 'my_data_v2'")}


# --- through the command line -------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return _scratch_project(tmp_path_factory.mktemp("strict"))


def _local(project, text: str) -> None:
    (project / "conf" / "local" / "parameters.yml").write_text(text)


def test_typos_and_an_old_layout_stop_kedro_run_naming_each_file_and_fix(project):
    _local(project, "trian:\n  steps: 3\ndatasets:\n  aahq:\n    curation: {top_m: 5}\ncurate:\n  aahq: {top_n: 5}\n")
    error = error_paragraph(kedro(project, "run", "--pipeline=curate_aahq", "--params=sampling.stepz=3"))
    assert "conf/local/parameters.yml: 'trian': unknown top-level block; did you mean 'train'?" in error
    assert "conf/local/parameters.yml: 'datasets.aahq.curation.top_m': unknown key; did you mean 'top_n'?" in error
    assert "--params: 'sampling.stepz': unknown key; did you mean 'steps'?" in error
    assert ("conf/local/parameters.yml: 'curate': an older layout: 'curate.<dataset>.<key>' is now "
            "'datasets.<dataset>.curation.<key>'") in error
    assert not (project / "data" / "03_primary").exists()  # before any compute


def test_a_mapping_given_as_a_list_names_both_files(project):
    _local(project, "datasets:\n  - aahq\n  - metfaces\n")
    error = error_paragraph(kedro(project, "run", "--pipeline=curate_aahq"))
    assert "conf/local/parameters.yml: 'datasets' is a list, but conf/base/parameters_" in error
    assert "has it as a mapping (of dataset names)" in error
    assert "Cannot merge incompatible container types" not in error


def test_a_refused_dataset_name_is_listed_and_the_registry_still_lists_the_others(project):
    _local(project, 'datasets:\n  "my data":\n    images: data/01_raw/mine\n')
    listed = subprocess.run([str(KEDRO), "registry", "list"], cwd=project, env={**ENV, "KEDRO_ENV": "local"},
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    names = _listed(listed.stdout)
    assert "sdft_aahq" in names and not any("my data" in name for name in names)
    logged = " ".join((listed.stdout + listed.stderr).split())  # rich wraps log lines, naming the source line
    assert "'datasets.my data' is left out" in logged and "rename the key, e.g. 'my_data'" in logged
