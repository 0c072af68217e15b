"""conf/paper's Stable Diffusion sources, declared by Hub id (issue 34): the settings
cited from diffusers' DreamBooth and LoRA examples, and offline, with the models
absent from the local Hugging Face cache, runs that stop before any compute
naming the YAML key, the id, what is missing and how to get it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._pipeline_helpers import PAPER_DATA, _run, _scratch_project

SD15, SD21 = "stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/stable-diffusion-2-1-base"


def _paper_params() -> dict:
    from diffusion_transfer.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS

    args = {**CONFIG_LOADER_ARGS, "default_run_env": "paper"}
    return CONFIG_LOADER_CLASS(conf_source=str(Path(__file__).parents[1] / "conf"), **args)["parameters"]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # never the machine's own cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_paper_declares_stable_diffusion_with_the_examples_settings(empty_cache):
    from diffusion_transfer.project.resolved import resolve_parameters

    params = _paper_params()
    assert (params["sources"]["sd15"]["model"], params["sources"]["sd21_base"]["model"]) == (SD15, SD21)
    resolved = resolve_parameters(params)
    assert resolved.sampling["sd15"].guidance_scale == 7.5 and resolved.sampling["sd21_base"].steps == 50
    for dataset in ("dog_sd15", "dog_sd21"):
        assert resolved.datasets[dataset].instance_prompt == "a photo of sks dog"
        full, lora = resolved.runs[f"naive_{dataset}"], resolved.runs[f"sdft_{dataset}_lora"]
        assert (full.train.steps, full.train.lr, full.train.batch_size, full.adapter) == (400, 5e-6, 1, None)
        assert (lora.train.steps, lora.train.lr, lora.adapter.rank, lora.adapter.alpha) == (500, 1e-4, 4, 4.0)
    if "dreambooth_dog_sd15" in resolved.runs:  # the method's own keys (methods.dreambooth)
        dreambooth = resolved.runs["dreambooth_dog_sd15"]
        assert dreambooth.train.steps == 800 and dreambooth.hyperparameters["class_prompt"] == "a photo of dog"
        assert (dreambooth.hyperparameters["num_class_images"], dreambooth.hyperparameters["prior_loss_weight"]) \
            == (200, 1.0)


def _offline_message(tmp_path, pipeline: str) -> tuple[str, Path]:
    from diffusion_transfer.project.preflight import MissingInputsError

    proj = _scratch_project(tmp_path)
    with pytest.raises(MissingInputsError) as err:
        _run(proj, "paper", pipeline)
    return str(err.value), proj


@pytest.mark.parametrize("pipeline, source, repo", [("sdft_dog_sd15_lora", "sd15", SD15),
                                                    ("dreambooth_dog_sd21", "sd21_base", SD21)])
def test_an_uncached_paper_source_stops_before_any_compute(tmp_path, empty_cache, pipeline, source, repo):
    from diffusion_transfer.project.registry import register_pipelines

    if pipeline.startswith("dreambooth") and pipeline not in register_pipelines(_paper_params()):
        pytest.skip("the dreambooth method is not registered in this tree yet")
    message, proj = _offline_message(tmp_path, pipeline)
    line = next((line for line in message.splitlines() if f"sources.{source}.model is the Hub id" in line), "")
    assert f"sources.{source}.model is the Hub id {repo!r}, which cannot be loaded offline" in line, message
    assert "not in the local Hugging Face cache" in line
    for part in ("unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/scheduler_config.json"):
        assert part in line
    assert f"huggingface-cli download {repo}" in line and "local folder" in line
    assert "- dog_raw:" in message or "data/01_raw/dreambooth_dog" in message  # the images are listed too
    assert not (proj / PAPER_DATA).exists()  # nothing was computed


def test_the_command_line_says_it_in_one_error_without_a_traceback(tmp_path, empty_cache):
    proj = _scratch_project(tmp_path)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(empty_cache)}
    kedro = Path(sys.executable).parent / "kedro"
    done = subprocess.run([str(kedro), "run", "--pipeline=naive_dog_sd15", "--env=paper"], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    message = done.stderr[done.stderr.index("Error: "):]
    assert message.count("Error: ") == 1 and "nothing was computed" in message
    assert f"sources.sd15.model is the Hub id {SD15!r}" in message and f"huggingface-cli download {SD15}" in message
    assert not (proj / PAPER_DATA).exists()
