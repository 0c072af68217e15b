"""conf/README.md's blocks, each run by a test.

Every YAML block of conf/README.md sits between ``<!-- marker -->`` comments
that a test reads. Here: each parameter block validates through the
project's parameter validation, merged over conf/base's parameters as
Kedro's soft merge does; the data-root block gives the data root the
README's rule says; the CLIP catalog block builds open_clip entries; and one
smoke-sized run of the README's declaration, curated by its prompt block,
writes the fine-tuned model that the README's Python block loads with
diffusers. The other blocks run in tests/test_own_data.py and
tests/test_failures_listed.py."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from diffusion_transfer.project.resolved import resolve_parameters
from tests._pipeline_helpers import ROOT
from tests.test_own_data import README, own_data_project

#: Parameter blocks that go into conf/mydata/parameters.yml (a curation block replaces ``curation: {}``).
PARAMETER_BLOCKS = ["own-data-yaml", "curation-prompt", "curation-zero-shot", "curation-few-shot"]


def readme_block(marker: str) -> str:
    text = README.read_text()
    body = text[text.index(f"<!-- {marker} -->"):text.index(f"<!-- /{marker} -->")]
    return re.search(r"```\w*\n(.*?)```", body, re.S).group(1)


def yaml_block_markers(text: str) -> list[str | None]:
    """The marker around each YAML block of ``text``, in order (None: no marker)."""
    markers = []
    for block in re.finditer(r"```yaml\n.*?```", text, re.S):
        before, after = text[:block.start()], text[block.end():]
        opened = re.findall(r"<!-- ([\w-]+) -->", before)
        name = opened[-1] if opened else None
        closed = name is not None and after.lstrip().startswith(f"<!-- /{name} -->")
        markers.append(name if closed else None)
    return markers


def env_parameters(env: str) -> dict:
    """conf/base's parameters, with ``env``'s merged over them (Kedro's soft merge)."""
    merged = OmegaConf.create()
    for folder in dict.fromkeys(["base", env]):
        for path in sorted((ROOT / "conf" / folder).glob("parameters*.yml")):
            # JSON round trip: YAML anchors share dicts, Kedro's loader gives each its own
            merged = OmegaConf.merge(merged, json.loads(json.dumps(yaml.safe_load(path.read_text()))))
    return merged


def merged_over(params, *blocks: dict) -> dict:
    for block in blocks:
        params = OmegaConf.merge(params, block)
    return OmegaConf.to_container(params)  # ${globals:...} kept as text, as in the files


def own_declaration(curation_block: str | None = None) -> dict:
    declared = yaml.safe_load(readme_block("own-data-yaml"))
    if curation_block:
        declared = OmegaConf.to_container(OmegaConf.merge(declared, yaml.safe_load(readme_block(curation_block))))
    return declared


def test_every_yaml_block_has_a_marker_that_a_test_reads():
    markers = yaml_block_markers(README.read_text())
    assert len(markers) >= 7 and None not in markers, markers
    tests_text = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    unread = [m for m in markers if f'"{m}"' not in tests_text]
    assert not unread, f"YAML blocks of conf/README.md no test reads: {unread}"


def test_a_yaml_block_without_a_marker_is_found():
    text = "<!-- a -->\n```yaml\nx: 1\n```\n<!-- /a -->\n\n```yaml\ny: 2\n```\n"
    assert yaml_block_markers(text) == ["a", None]


@pytest.mark.parametrize("marker", PARAMETER_BLOCKS)
def test_each_parameter_block_validates_over_base(marker):
    params = merged_over(env_parameters("base"), own_declaration(None if marker == "own-data-yaml" else marker))
    resolve_parameters(params)
    assert holds(params, yaml.safe_load(readme_block(marker)))  # the block's values are the ones validated


def holds(params: dict, block: dict) -> bool:
    """Every value of ``block`` is in ``params`` at the same key path."""
    return all(holds(params.get(k) or {}, v) if isinstance(v, dict) and v else params.get(k) == v
               for k, v in block.items())


def test_a_wrong_curation_block_is_refused():
    """The validation the blocks pass is one that a block can fail: a prompt needs one of top_n and threshold."""
    from diffusion_transfer.project.schema import InvalidParametersError

    wrong = {"datasets": {"mydata": {"curation": {"threshold": 0.3}}}}
    params = merged_over(env_parameters("base"), own_declaration("curation-prompt"), wrong)
    with pytest.raises(InvalidParametersError, match=r"datasets.mydata.curation.*exactly one of threshold and top_n"):
        resolve_parameters(params)


def test_the_run_file_parameters_validate_over_their_environment():
    run = yaml.safe_load(readme_block("own-data-any-env-file"))["run"]
    params = merged_over(env_parameters(run["env"]), run["params"])
    resolve_parameters(params)
    assert params["train"]["steps"] == 4  # smoke's settings, under the run file's declaration


def _data_root(conf, env, monkeypatch, override=None):
    from diffusion_transfer.project import config

    # a loader registers itself as the active one: keep the session's for the tests after this one
    monkeypatch.setitem(config._ACTIVE, "loader", config._ACTIVE["loader"])
    if override:
        monkeypatch.setenv("DT_DATA_ROOT", override)
    else:
        monkeypatch.delenv("DT_DATA_ROOT", raising=False)
    return config.ProjectConfigLoader(conf_source=str(conf), env=env, **config.LOADER_ARGS)["globals"]["data_root"]


def test_the_data_root_follows_the_readme_rule(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    for env in ("base", "smoke", "paper"):
        (conf / env).mkdir(parents=True)
        shutil.copy(ROOT / "conf" / env / "globals.yml", conf / env / "globals.yml")
    (conf / "local").mkdir()
    (conf / "mydata").mkdir()
    roots = {env: _data_root(conf, env, monkeypatch) for env in ("base", "local", "smoke", "paper", "mydata")}
    assert roots == {"base": "data", "local": "data", "smoke": "data/smoke", "paper": "data/paper",
                     "mydata": "data/mydata"}
    (conf / "mydata" / "globals.yml").write_text(readme_block("data-root-globals"))
    assert _data_root(conf, "mydata", monkeypatch) == "/scratch/mydata_runs"
    assert _data_root(conf, "mydata", monkeypatch, override="data/studies/p1") == "data/studies/p1"


def test_the_clip_catalog_block_builds_open_clip_entries(monkeypatch):
    from kedro.io import DataCatalog

    monkeypatch.chdir(ROOT)  # the weights path is relative to the project, as in a run
    entries = yaml.safe_load(readme_block("own-clip-catalog"))
    catalog = DataCatalog.from_config(entries)
    for name in ("curation_clip", "evaluation_clip"):
        described = catalog.get(name)._describe()
        assert described["kind"] == "open_clip" and described["model"] == "ViT-B-32"
        weights = described["pretrained"]
        missing = catalog.get(name).missing()  # the pre-run check's answer: the file to put in place
        assert (missing is None) if (ROOT / weights).is_file() else (weights in missing)


# --- one smoke-sized run of the declaration: curation by the prompt block, then the loading block ----------


def run_to_outputs(proj, env: str, pipeline: str, outputs: list[str]) -> None:
    """``kedro run --env=<env> --pipeline=<pipeline> --to-outputs=<outputs>`` in ``proj``, in this process
    (the imports are paid once) and on one torch thread (tiny models, shared cores)."""
    import os

    import torch
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from diffusion_transfer.project import config

    old_cwd, old_threads, old_loader = Path.cwd(), torch.get_num_threads(), config._ACTIVE["loader"]
    os.chdir(proj)
    torch.set_num_threads(1)
    try:
        bootstrap_project(proj)
        with KedroSession.create(project_path=proj, env=env) as session:
            session.run(pipeline_names=[pipeline], to_outputs=outputs)
    finally:
        os.chdir(old_cwd)
        torch.set_num_threads(old_threads)
        config._ACTIVE["loader"] = old_loader  # the tests after this one read their own project's parameters


@pytest.fixture(scope="module")
def finetuned_project(tmp_path_factory):
    """``sdft_mydata`` up to the fine-tuned model, with the README's declaration and smoke-sized
    block, curated by its prompt block; the folder holds one image under the model's size."""
    proj = own_data_project(tmp_path_factory.mktemp("conf_readme"))
    small = np.random.default_rng(3).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(small).save(proj / "data" / "01_raw" / "mydata" / "small.png")
    (proj / "conf" / "mydata" / "parameters.yml").write_text(yaml.safe_dump(own_declaration("curation-prompt")))
    run_to_outputs(proj, "mydata", "sdft_mydata", ["sdft_mydata.finetuned_model"])
    return proj


@pytest.mark.slow
def test_the_prompt_block_curates_and_a_small_image_is_skipped_and_listed(finetuned_project):
    summary = json.loads((finetuned_project / "data/mydata/08_reporting/curate_mydata/summary.json").read_text())
    block = yaml.safe_load(readme_block("curation-prompt"))["datasets"]["mydata"]["curation"]
    assert summary["criteria"]["prompt"] == block["prompt"] and summary["top_n"] == block["top_n"]
    assert summary["skipped"] == [{"file": "small.png", "reason": "too small: 40x40 < 64"}]
    assert set(block["exclude"]).isdisjoint(summary["kept"])
    assert len(summary["kept"]) == block["top_n"] - summary["counts"]["excluded"]


@pytest.mark.slow
def test_the_loading_block_loads_the_finetuned_model_with_diffusers(finetuned_project, monkeypatch):
    from diffusers import DDPMPipeline

    monkeypatch.chdir(finetuned_project)
    namespace: dict = {}
    exec(readme_block("load-finetuned-model"), namespace)  # noqa: S102 - the README's own code
    pipe = namespace["pipe"]
    assert isinstance(pipe, DDPMPipeline)
    # the model as trained: its resolution and the schedule it came with (tests/test_own_data.py's model)
    assert pipe.unet.config.sample_size == 64
    assert (pipe.scheduler.config.beta_schedule, pipe.scheduler.config.prediction_type) == \
        ("squaredcos_cap_v2", "v_prediction")
    images = pipe(batch_size=1, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 64, 64, 3)
