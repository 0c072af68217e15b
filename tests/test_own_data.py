"""A researcher's own data and model, declared only in configuration.

The configuration and the commands are the ones in conf/README.md ("Your own
data and model"), run as written through the real ``kedro`` command line in
a scratch copy of the project: a folder of PNGs and a tiny diffusers
pipeline folder (cosine schedule, v-prediction, 64x64)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests._pipeline_helpers import ROOT, _scratch_project

README = ROOT / "conf" / "README.md"
KEDRO = Path(sys.executable).parent / "kedro"
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}


def _readme_block(marker: str) -> str:
    text = README.read_text()
    body = text[text.index(f"<!-- {marker} -->"):text.index(f"<!-- /{marker} -->")]
    return re.search(r"```\w*\n(.*?)```", body, re.S).group(1)


def _write_pngs(folder: Path, n: int, size: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        # smooth colour gradients, so that images differ but are not pure noise
        base = rng.uniform(0, 255, 3)
        ramp = np.linspace(0, 80, size)[None, :, None] * rng.uniform(-1, 1, 3)
        img = np.clip(base + ramp + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img_{i:03d}.png")


def tiny_pipeline_folder(path: Path, *, sample_size: int = 64, beta_schedule: str = "squaredcos_cap_v2",
                         prediction_type: str = "v_prediction", out_channels: int = 3) -> None:
    """A ``DDPMPipeline.save_pretrained`` folder (unet/ + scheduler/), as a user's model would be."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=sample_size, in_channels=3, out_channels=out_channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=4)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, prediction_type=prediction_type)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(path))


def own_data_project(tmp_path: Path) -> Path:
    proj = _scratch_project(tmp_path)
    _write_pngs(proj / "data" / "01_raw" / "mydata", 12, 80, seed=1)  # over the model's 64: cropped and resized
    _write_pngs(proj / "data" / "01_raw" / "my_source_images", 16, 64, seed=2)
    tiny_pipeline_folder(proj / "data" / "06_models" / "my_ddpm")
    (proj / "conf" / "mydata").mkdir()
    (proj / "conf" / "mydata" / "parameters.yml").write_text(_readme_block("own-data-yaml"))
    return proj


def _listed(stdout: str) -> list[str]:
    """The pipeline names of ``kedro registry list`` (a YAML list after Kedro's log lines)."""
    return [line[2:].strip() for line in stdout.splitlines() if line.startswith("- ")]


def kedro(proj: Path, *args: str, timeout: int = 2400) -> subprocess.CompletedProcess:
    return subprocess.run([str(KEDRO), *args], cwd=proj, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_the_readme_yaml_declares_a_source_and_a_dataset():
    params = yaml.safe_load(_readme_block("own-data-yaml"))
    assert params["datasets"]["mydata"]["source"] == "my_source"
    assert set(params["sources"]["my_source"]) == {"model", "images"}


@pytest.mark.slow
def test_own_data_and_model_run_as_the_readme_says(tmp_path):
    proj = own_data_project(tmp_path)
    listed = subprocess.run([str(KEDRO), "registry", "list"], cwd=proj, env={**ENV, "KEDRO_ENV": "mydata"},
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    names = _listed(listed.stdout)
    for name in ("curate_mydata", "classifier_mydata", "sdft_mydata", "tan_mydata", "compare_mydata"):
        assert name in names
    # base knows nothing of mydata: the declaration lives in the mydata environment only
    base_names = _listed(kedro(proj, "registry", "list").stdout)
    assert "sdft_mydata" not in base_names and "sdft_aahq" in base_names

    for command in _readme_block("own-data-commands").strip().splitlines():
        args = command.split()[1:]
        done = kedro(proj, *args)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr

    out = proj / "data" / "mydata" / "08_reporting" / "sdft_mydata"  # the environment's own data root
    report = (out / "report.md").read_text()
    assert "Noise schedule: squaredcos_cap_v2, T=1000, v_prediction prediction, from the model's scheduler config" \
        in report
    assert "FaceWorld attribute metrics (face rate, retention, coverage): off (datasets.mydata.attributes: false)" \
        in report
    history = json.loads((out / "training_history.json").read_text())
    assert history["noise_schedule"]["prediction_type"] == "v_prediction"
    summary = json.loads((out.parent / "curate_mydata" / "summary.json").read_text())
    assert summary["counts"]["kept"] == 12
    # the fine-tuned model is saved with the schedule it was trained with, at the model's resolution, in the
    # layout it came in (a pipeline folder), which diffusers' own loader reads (issue 31)
    model_dir = proj / "data" / "mydata" / "06_models" / "sdft_mydata" / "model"
    saved = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    assert saved["beta_schedule"] == "squaredcos_cap_v2" and saved["prediction_type"] == "v_prediction"
    assert json.loads((model_dir / "unet" / "config.json").read_text())["sample_size"] == 64
    from diffusers import DDPMPipeline, DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(model_dir))
    assert isinstance(pipe, DDPMPipeline) and pipe.scheduler.config.prediction_type == "v_prediction"
    assert f'DiffusionPipeline.from_pretrained("{model_dir.relative_to(proj)}")' in report
    comparison = json.loads((out.parent / "compare_mydata" / "comparison.json").read_text())
    assert list(comparison["rows"])[1:] == ["scratch", "naive", "sdft", "attn", "a3ft", "anl", "anl_uncond",
                                            "naive_clip", "tan"]


def test_an_explicit_resolution_that_disagrees_with_the_model_stops_before_compute(tmp_path):
    proj = own_data_project(tmp_path)
    done = kedro(proj, "run", "--pipeline=curate_mydata", "--env=mydata",
                 "--params=datasets.mydata.curation.resolution=32")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    message = done.stderr[done.stderr.index("Error: "):]
    assert "datasets.mydata.curation.resolution is 32" in message and "sample_size 64" in message
    assert not (proj / "data" / "mydata" / "03_primary").exists()


def test_a_schedule_the_code_cannot_honour_stops_before_compute(tmp_path):
    proj = own_data_project(tmp_path)
    config = proj / "data" / "06_models" / "my_ddpm" / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "beta_schedule": "sigmoid"}))
    done = kedro(proj, "run", "--pipeline=sdft_mydata", "--env=mydata")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    message = done.stderr[done.stderr.index("Error: "):]
    assert "beta_schedule" in message and "sigmoid" in message and "my_ddpm" in message
    assert not (proj / "data" / "mydata" / "03_primary").exists()


@pytest.mark.slow
def test_a_source_without_images_uses_its_own_samples_and_says_so(tmp_path):
    """Issue 31: sources.<s>.images is optional. The domain classifier's class 0 and the translation
    inputs are then the source model's own samples, labelled as such."""
    proj = own_data_project(tmp_path)
    params = yaml.safe_load((proj / "conf" / "mydata" / "parameters.yml").read_text())
    del params["sources"]["my_source"]["images"]
    (proj / "conf" / "mydata" / "parameters.yml").write_text(yaml.safe_dump(params))
    done = kedro(proj, "run", "--pipeline=naive_mydata", "--env=mydata")
    assert done.returncode == 0, done.stderr[-3000:]
    out = proj / "data" / "mydata" / "08_reporting"
    classifier = json.loads((out / "classifier_mydata" / "report.json").read_text())
    assert classifier["source_folder"] == "the source model's own samples (sources.<s>.images is not set)"
    assert classifier["train"]["source"] + classifier["held_out"]["source"] == 8  # sampling.n_samples
    metrics = json.loads((out / "naive_mydata" / "translation_metrics.json").read_text())
    assert metrics["inputs_folder"] == classifier["source_folder"]
    assert "the source model's own samples" in (out / "naive_mydata" / "report.md").read_text()
