"""Kedro wiring: the registry, parameter validation and an end-to-end smoke
run of ``sdft_aahq`` through a KedroSession in a scratch copy of the project."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_registry_lists_every_method_and_dataset():
    from diffusion_transfer.pipeline_registry import register_pipelines

    pipes = register_pipelines()
    for name in ["world", "curate_aahq", "curate_metfaces", "compare_aahq", "compare_metfaces", "__default__"]:
        assert name in pipes
    for method in ["scratch", "naive", "sdft"]:
        for dataset in ["aahq", "metfaces"]:
            p = pipes[f"{method}_{dataset}"]
            names = {n.name for n in p.nodes}
            assert f"{method}_{dataset}.finetune" in names
            assert f"{method}_{dataset}.report" in names
            assert f"curate_{dataset}" in names
    assert pipes["__default__"].nodes == pipes["sdft_aahq"].nodes


def _base_params() -> dict:
    params: dict = {}
    for f in sorted((ROOT / "conf" / "base").glob("parameters*.yml")):
        params.update(yaml.safe_load(f.read_text()))
    return params


def test_base_parameters_validate():
    from diffusion_transfer.hooks import validate_parameters

    validate_parameters(_base_params())


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (("train", "batch_size"), 0, "train (with datasets.aahq.train).batch_size"),
        (("sampling", "sampler"), "euler", "sampling.sampler"),
        (("methods", "sdft", "lambda_distill"), -1.0, "lambda_distill"),
        (("methods", "sdft", "weighting"), "cubic", "weighting"),
        (("curate", "aahq", "top_n"), None, "threshold"),
    ],
)
def test_invalid_parameters_are_rejected_naming_the_parameter(path, value, expected):
    from diffusion_transfer.hooks import validate_parameters
    from diffusion_transfer.pipelines.params import InvalidParametersError

    params = _base_params()
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(InvalidParametersError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        validate_parameters(params)


def _scratch_project(tmp_path: Path) -> Path:
    proj = tmp_path / "project"
    proj.mkdir()
    shutil.copy(ROOT / "pyproject.toml", proj / "pyproject.toml")
    shutil.copytree(ROOT / "conf", proj / "conf", ignore=shutil.ignore_patterns("local"))
    (proj / "conf" / "local").mkdir()
    shutil.copytree(ROOT / "src", proj / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (proj / "data" / "06_models").mkdir(parents=True)
    (proj / "data" / "06_models" / "world").symlink_to(ROOT / "data" / "06_models" / "world")
    return proj


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``kedro run --pipeline=sdft_aahq --env=smoke`` in a scratch copy of the project."""
    import os

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    proj = _scratch_project(tmp_path_factory.mktemp("smoke"))
    old = Path.cwd()
    os.chdir(proj)
    try:
        bootstrap_project(proj)
        with KedroSession.create(project_path=proj, env="smoke") as session:
            session.run(pipeline_names=["sdft_aahq"])
    finally:
        os.chdir(old)
    return proj


@pytest.mark.slow
def test_sdft_aahq_smoke_run_end_to_end(smoke_run):
    proj = smoke_run
    out = proj / "data" / "08_reporting" / "sdft_aahq"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("source", "finetuned"):
        assert metrics["models"][key]["fid"] >= 0
        assert 0 <= metrics["models"][key]["face_rate"] <= 1
    assert metrics["models"]["finetuned"]["lpips_src_trg"] >= 0
    assert set(metrics["models"]["finetuned"]["retention"]) >= {"expression", "eyewear"}
    lpips_label = metrics["weights"]["lpips"].lower()
    assert "substitute" in lpips_label or "untrained" in lpips_label
    assert "substitute" in metrics["weights"]["fid_kid"].lower() or "clip" in metrics["weights"]["fid_kid"].lower()
    report = (out / "report.md").read_text()
    assert "| sdft (fine-tuned) |" in report and "| source (pretrained) |" in report
    assert (out / "samples_src_vs_trg.png").stat().st_size > 0
    assert (out / "loss_curve.png").stat().st_size > 0
    summary = json.loads((proj / "data" / "08_reporting" / "curate_aahq" / "summary.json").read_text())
    assert summary["counts"]["kept"] == 24  # smoke: top_n 24
    assert (proj / "data" / "08_reporting" / "curate_aahq" / "contact_sheet.png").exists()
    history = json.loads((out / "training_history.json").read_text())
    assert history["run"]["hyperparameters"]["gamma_aux"] == 50.0  # Table 5, AAHQ override applied
    assert history["history"][-1]["step"] == 4


@pytest.mark.slow
def test_walkthrough_notebook_executes_headless(smoke_run):
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    os.environ["DT_ENV"], os.environ["DT_PROJECT"] = "smoke", str(smoke_run)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(smoke_run)}}).execute()
    finally:
        del os.environ["DT_ENV"], os.environ["DT_PROJECT"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "Weights each metric ran on" in text
