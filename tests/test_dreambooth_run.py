"""DreamBooth with prior preservation on a user's Stable Diffusion-layout
folder, declared only in YAML (issue 34): the real ``kedro run`` samples the
class images once (a second run reads them from the cache), trains LoRA on
captions plus class examples, and its LoRA loads with diffusers' own loader."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.test_own_data import kedro
from tests.test_text_to_image_run import PARAMS, assert_the_lora_gives_the_saved_pipeline, make_sd_project

CLASS = {"class_prompt": "a photo of a dog", "num_class_images": 3, "prior_loss_weight": 0.5,
         "class_images": {"steps": 2, "batch_size": 2, "guidance_scale": 2.0}}


@pytest.fixture(scope="module")
def db_project(tmp_path_factory) -> Path:
    params = copy.deepcopy(PARAMS)
    params["datasets"]["mydata"]["method_overrides"] = {"dreambooth": CLASS}
    return make_sd_project(tmp_path_factory, params)


@pytest.mark.slow
def test_dreambooth_samples_its_class_images_once_and_its_lora_loads_in_diffusers(db_project):
    import torch

    done = kedro(db_project, "run", "--pipeline=dreambooth_mydata", "--env=mydata")
    assert done.returncode == 0, done.stderr[-3000:]
    out = db_project / "data" / "mydata"
    history = json.loads((out / "08_reporting" / "dreambooth_mydata" / "training_history.json").read_text())
    assert {"diffusion", "prior"} <= set(history["history"][-1])
    assert history["run"]["hyperparameters"]["class_prompt"] == "a photo of a dog"
    from diffusion_transfer.datasets import TensorDictDataset

    class_file = out / "05_model_input" / "dreambooth_mydata" / "class_images.safetensors"
    first = TensorDictDataset(filepath=str(class_file)).load()
    assert first["images"].shape == (3, 16, 16, 3) and first["images"].dtype == torch.uint8
    assert first["meta"]["generated_now"] == 3 and first["meta"]["steps"] == 2

    assert_the_lora_gives_the_saved_pipeline(db_project, "dreambooth_mydata")

    # a second run with one more class image samples only that one; the first three are the cached ones
    again = kedro(db_project, "run", "--pipeline=dreambooth_mydata", "--env=mydata", "--nodes=dreambooth_mydata.generate_class_images",
                  "--params=datasets.mydata.method_overrides.dreambooth.num_class_images=4")
    assert again.returncode == 0, again.stderr[-3000:]
    second = TensorDictDataset(filepath=str(class_file)).load()
    assert second["meta"]["generated_now"] == 1 and second["meta"]["read_from_cache"] == 3
    assert torch.equal(second["images"][:3], first["images"])


def _written(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*") if p.is_file()} if root.exists() else {}


def test_dreambooth_without_a_class_prompt_stops_before_compute(db_project):
    before = _written(db_project / "data" / "mydata")
    done = kedro(db_project, "run", "--pipeline=dreambooth_mydata", "--env=mydata",
                 "--params=datasets.mydata.method_overrides.dreambooth.class_prompt=null")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    message = done.stderr[done.stderr.index("Error: "):]
    assert "methods.dreambooth.class_prompt is not set" in message and "'a photo of dog'" in message
    assert _written(db_project / "data" / "mydata") == before  # nothing computed, nothing written


def test_dreambooth_runs_only_where_the_source_is_text_to_image():
    from diffusion_transfer.project.config import active_parameters
    from diffusion_transfer.project.registry import register_pipelines

    pipelines = register_pipelines(active_parameters())
    assert "dreambooth_aahq" not in pipelines and "sdft_aahq" in pipelines
    assert not any("dreambooth" in name for n in pipelines["compare_aahq"].nodes for name in n.inputs)
