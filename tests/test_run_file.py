"""A run file (``kedro run --config=FILE``) is checked like the parameters
(issue 32): a YAML error names the file and line, an unknown key the closest
option, a value of the wrong kind what the option takes; never a traceback,
never an empty message. The checker on its own, then the ``kedro`` command
line in a scratch copy of the project (FaceWorld, ``--env=smoke``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusion_transfer.project.run_file import RunFileError, check_run_file
from tests._pipeline_helpers import _scratch_project
from tests.test_failures import error_paragraph
from tests.test_own_data import kedro


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _file(tmp_path, text)
    with pytest.raises(RunFileError) as caught:
        check_run_file(path)
    message = caught.value.message
    assert message.startswith(f"{path}"), message
    return message


# --- the checker --------------------------------------------------------------------------


def test_a_valid_run_file_gives_its_options(tmp_path):
    path = _file(tmp_path, "run:\n  pipeline: curate_aahq\n  env: smoke\n  only_missing_outputs: true\n"
                           "  params: {train.steps: 4}\n  tags: a,b\n")
    assert check_run_file(path) == {"pipeline": "curate_aahq", "env": "smoke", "only_missing_outputs": True,
                                    "params": {"train.steps": 4}, "tags": "a,b"}


@pytest.mark.parametrize("text, line, problem", [
    ("run:\n  pipeline: [a\n  env: smoke\n", 3, "did not find expected ',' or ']'"),
    ("run:\n  env: smoke\n   pipeline: x\n", 3, "mapping values are not allowed"),
    ("run:\n  env: smoke\n  env: local\n", 3, "found duplicate key env"),
])
def test_a_yaml_error_names_the_file_and_line(tmp_path, text, line, problem):
    message = _error(tmp_path, text)
    assert f"run.yml, line {line}: " in message and problem in message


@pytest.mark.parametrize("text, expected", [
    ("run:\n  pipline: sdft_aahq\n", "unknown key 'run.pipline'; did you mean 'pipeline'?"),
    ("run:\n  nodes: a\n", "unknown key 'run.nodes'; did you mean 'node_names'?"),  # the flag, not the key
    ("run:\n  from-nodes: a\n", "unknown key 'run.from-nodes'; did you mean 'from_nodes'?"),
    ("run:\n  colour: blue\n", "unknown key 'run.colour'; the keys are conf_source, env, from_inputs"),
    ("runn:\n  pipeline: a\n", "unknown key 'runn'; did you mean 'run'?"),
    ("pipeline: sdft_aahq\n", "unknown key 'pipeline'; did you mean 'run.pipeline'?"),
    ("run:\n  pipeline: a\nextra: 1\n", "unknown key 'extra'; kedro run reads only 'run:'"),
    ("", "no 'run:' key; a run file lists kedro run's options under it"),
    ("- pipeline\n", "no 'run:' key"),
    ("run: sdft_aahq\n", "'run' must be a mapping of kedro run's options (got 'sdft_aahq')"),
])
def test_an_unknown_or_missing_key_says_what_was_meant(tmp_path, text, expected):
    assert expected in _error(tmp_path, text)


@pytest.mark.parametrize("text, expected", [
    ("run:\n  only_missing_outputs: 3\n", "'run.only_missing_outputs' takes true or false (got 3)"),
    ("run:\n  tags: [a, b]\n", "'run.tags' takes text (several names: 'a,b' in one string) (got ['a', 'b'])"),
    ("run:\n  pipeline: {name: a}\n", "'run.pipeline' takes text (got {'name': 'a'})"),
    ("run:\n  params: [a]\n", "'run.params' takes a mapping or 'key=value,...' text (got ['a'])"),
])
def test_a_value_of_the_wrong_kind_says_what_the_option_takes(tmp_path, text, expected):
    assert expected in _error(tmp_path, text)


def test_every_problem_is_listed_one_a_line(tmp_path):
    message = _error(tmp_path, "run:\n  pipline: a\n  tags: [a]\n")
    assert message.splitlines()[1:] == ["  unknown key 'run.pipline'; did you mean 'pipeline'?",
                                        "  'run.tags' takes text (several names: 'a,b' in one string) (got ['a'])"]


# --- the command line ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return _scratch_project(tmp_path_factory.mktemp("run_file"))


@pytest.mark.parametrize("text, expected", [
    ("run:\n  pipeline: [curate_aahq\n  env: smoke\n",
     "bad.yml, line 3: did not find expected ',' or ']'; while parsing a flow sequence (line 2)"),
    ("run:\n  pipline: curate_aahq\n  env: smoke\n", "bad.yml: unknown key 'run.pipline'; did you mean 'pipeline'?"),
])
def test_kedro_run_with_a_bad_run_file_is_one_error_paragraph(project, text, expected):
    path = project / "bad.yml"
    path.write_text(text)
    done = kedro(project, "run", f"--config={path}", timeout=600)
    error = error_paragraph(done)  # status 1, no traceback, one Error: paragraph
    assert error == f"Error: {path.resolve().parent}/{expected}" and "NoneType" not in done.stderr


def test_kedro_run_with_a_valid_run_file_runs(project):
    path = project / "good.yml"
    path.write_text("run:\n  pipeline: curate_aahq\n  env: smoke\n")
    done = kedro(project, "run", f"--config={path}", timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "Completed node: curate_aahq" in done.stdout + done.stderr
    assert (project / "data" / "smoke" / "03_primary" / "aahq" / "curated.safetensors").is_file()
