"""A user's text-to-image model in the Stable Diffusion layout, declared only
in YAML (issue 34): a tiny ``StableDiffusionPipeline`` folder (tests/core/_sd_helpers.py)
fine-tuned with SDFT + LoRA on captioned images through the real ``kedro run``,
its LoRA loaded with ``StableDiffusionPipeline.load_lora_weights``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests._pipeline_helpers import _scratch_project
from tests.core._sd_helpers import tiny_sd_folder
from tests.test_own_data import _write_pngs, kedro

#: conf/base's evaluation.text_to_image.absent_prompts
ABSENT = yaml.safe_load((Path(__file__).parents[1] / "conf" / "base" / "parameters_finetune.yml").read_text()
                        )["evaluation"]["text_to_image"]["absent_prompts"]
CAPTIONS = ["a photo of a cat", "a red painting of a dog", "a blue cat", "a photo of a dog"]
PARAMS = {
    "sources": {"my_sd": {"model": "data/06_models/my_sd", "images": None}},
    "datasets": {"mydata": {"source": "my_sd", "images": "data/01_raw/mydata", "curation": {}}},
    "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1,
              "adapter": {"type": "lora", "rank": 2}},
    "sampling": {"n_samples": 2, "steps": 3, "batch_size": 2, "guidance_scale": 3.0, "negative_prompt": "blue"},
    # base's absent prompts (glasses, a woman) on both noises of the bank
    "evaluation": {"text_to_image": {"n_per_prompt": 2}},
}


def make_sd_project(tmp_path_factory, params: dict) -> Path:
    """A scratch project with captioned images in data/01_raw/mydata, the tiny
    Stable Diffusion folder as data/06_models/my_sd and ``params`` as env ``mydata``."""
    proj = _scratch_project(tmp_path_factory.mktemp("sd"))
    images = proj / "data" / "01_raw" / "mydata"
    _write_pngs(images, 4, 24, seed=1)
    (images / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"img_{i:03d}.png", "text": c}) + "\n"
                                                   for i, c in enumerate(CAPTIONS)))
    tiny_sd_folder(proj / "data" / "06_models" / "my_sd", tmp_path_factory.mktemp("tok"))
    (proj / "conf" / "mydata").mkdir()
    (proj / "conf" / "mydata" / "parameters.yml").write_text(yaml.safe_dump(params))
    return proj


def assert_the_lora_gives_the_saved_pipeline(project: Path, run: str) -> None:
    """The run's fine-tuned pipeline and the source with its LoRA loaded by diffusers give the same images."""
    import torch
    from diffusers import StableDiffusionPipeline

    model_dir = project / "data" / "mydata" / "06_models" / run / "model"
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    pipes = [StableDiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True),
             StableDiffusionPipeline.from_pretrained(str(project / "data" / "06_models" / "my_sd"),
                                                     local_files_only=True)]
    pipes[1].load_lora_weights(str(model_dir / "lora"))
    images = [p(["a photo of a cat"], latents=x.clone(), num_inference_steps=3, guidance_scale=3.0,
                output_type="pt").images for p in pipes]
    torch.testing.assert_close(images[0], images[1], atol=1e-4, rtol=1e-4)


def _refused(done) -> str:
    """The Error paragraph of a run stopped before compute (exit 1, no traceback)."""
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr[done.stderr.index("Error: "):]


@pytest.fixture(scope="module")
def sd_project(tmp_path_factory) -> Path:
    return make_sd_project(tmp_path_factory, PARAMS)


@pytest.mark.slow
def test_an_sd_folder_fine_tunes_with_sdft_and_lora_through_kedro_run(sd_project):
    done = kedro(sd_project, "run", "--pipeline=sdft_mydata", "--env=mydata")
    assert done.returncode == 0, done.stderr[-3000:]
    out = sd_project / "data" / "mydata"
    report = (out / "08_reporting" / "sdft_mydata" / "report.md").read_text()
    _assert_text_to_image_metrics(out / "08_reporting" / "sdft_mydata", report)
    assert "guidance scale 3.0" in report and "`a red painting of a dog`" in report
    history = json.loads((out / "08_reporting" / "sdft_mydata" / "training_history.json").read_text())
    assert {"diffusion", "distill", "aux"} <= set(history["history"][-1])
    assert_the_lora_gives_the_saved_pipeline(sd_project, "sdft_mydata")


def _assert_text_to_image_metrics(folder: Path, report: str) -> None:
    """metrics.json has FID/KID, the CLIP score and the absent concepts' rates,
    finite, labelled as computed on substitutes (FaceWorld's models on a user's
    images), and the report prints them."""
    import math

    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["kind"] == "text_to_image" and metrics["n_samples"] == 2
    for key in ("source", "finetuned"):
        row = metrics["models"][key]
        assert all(math.isfinite(row[k]) for k in ("fid", "kid_x1e3", "clip_score")), row
        assert 0 <= row["clip_score"] <= 100 and 0 <= row["absent_face_rate"] <= 1
        assert set(row["absent_concept_rate"]) == {c["prompt"] for c in ABSENT}
    concepts = metrics["absent_concepts"]["concepts"]
    assert metrics["absent_concepts"]["n_per_prompt"] == 2 and set(concepts) == {c["prompt"] for c in ABSENT}
    for row in concepts.values():
        assert all(math.isfinite(row[k]) for k in ("source_rate", "finetuned_rate", "training_set_rate",
                                                   "source_clip_score", "finetuned_clip_score"))
        assert row["kept"] is None or 0 <= row["kept"] <= 1
    assert "retention_of_absent_concepts" in metrics["models"]["finetuned"]
    assert metrics["clip_score_substitute"] and metrics["attributes_substitute"]
    assert "substitute" in metrics["weights"]["clip_score"] and "substitute" in metrics["weights"]["attributes"]
    assert "not computed" not in report
    assert "| model | FID | KID (x10^3) | CLIP score-substitute ↑ |" in report
    assert "## Concepts absent from the training set (substitute classifier)" in report
    assert f"| `{ABSENT[0]['prompt']}` | eyewear: glasses |" in report
    assert "- **clip_score**: faceworld-clip" in report and "- **fid_kid**:" in report


@pytest.mark.slow
def test_attn_fine_tunes_only_the_cross_attention_keys_and_values_of_an_sd_folder(sd_project):
    """attn on a text-to-image model is Custom Diffusion's baseline (docs/METHODS.md): full training, no adapter."""
    import torch  # in the test, as its neighbours: collecting the file stays light
    from diffusers import UNet2DConditionModel

    done = kedro(sd_project, "run", "--pipeline=attn_mydata", "--env=mydata", "--params=train.adapter=null")
    assert done.returncode == 0, done.stderr[-3000:]
    out = sd_project / "data" / "mydata"
    history = json.loads((out / "08_reporting" / "attn_mydata" / "training_history.json").read_text())
    assert history["parameters"]["trainable_parameters"] == 4 * 2 * 32 * 64  # to_k, to_v of 4 cross-attentions
    model_dir = out / "06_models" / "attn_mydata" / "model"
    assert (model_dir / "model_index.json").is_file() and not (model_dir / "lora").exists()
    tuned, source = (UNet2DConditionModel.from_pretrained(str(f / "unet"), local_files_only=True).state_dict()
                     for f in (model_dir, sd_project / "data" / "06_models" / "my_sd"))
    moved = {k for k in source if not torch.equal(tuned[k], source[k])}
    assert moved and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in moved), sorted(moved)


def test_a_method_that_does_not_train_text_to_image_models_stops_before_compute(sd_project):
    done = kedro(sd_project, "run", "--pipeline=a3ft_mydata", "--env=mydata")
    message = _refused(done)
    assert "methods.a3ft:" in message and "is a text-to-image model (Stable Diffusion layout" in message
    assert "sdft_<dataset>" in message and "copy the model folder again" not in message


def test_an_attn_lora_target_outside_the_cross_attention_stops_before_compute(tmp_path_factory):
    """attn's LoRA goes into the cross-attention keys and values it trains: a target
    such as conv1, which the model has but attn does not train, is refused by the pre-run check."""
    project = make_sd_project(tmp_path_factory, PARAMS)  # its own: nothing written by other runs
    done = kedro(project, "run", "--pipeline=attn_mydata", "--env=mydata",
                 "--params=train.adapter.target_modules=[conv1]")
    message = _refused(done)
    assert "train.adapter.target_modules (run attn_mydata)" in message
    assert "attn trains only the cross-attention key and value projections" in message
    assert "none of ['conv1'] is one of them. Layers LoRA can adapt there: to_k, to_v" in message
    assert not (project / "data" / "mydata").exists()  # before any compute: no curation, no source samples


def test_a_few_shot_split_keeps_the_captions_of_its_shots(tmp_path):
    """The captions of metadata.jsonl travel with the curated images (full and few-shot datasets)."""
    from types import SimpleNamespace

    from diffusion_transfer.datasets.folders import ImageFolder
    from diffusion_transfer.pipelines.curate.nodes import curate_few_shot
    from diffusion_transfer.project.schema import DatasetParams
    from tests._pipeline_helpers import _image_folder

    root = _image_folder(tmp_path, 6).root
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"img_{i:03d}.png", "text": f"cat {i}"})
                                                 + "\n" for i in range(5)))
    folder = ImageFolder(root, sorted(p for p in root.iterdir() if p.suffix == ".png"))
    model = SimpleNamespace(config=SimpleNamespace(sample_size=32))
    curated = curate_few_shot(folder, model, DatasetParams(name="toy", kind="few_shot",
                                                           curation={"n_shot": 3, "split_seed": 0}))[0]
    names, captions = curated["meta"]["names"], curated["meta"]["captions"]
    assert captions == [f"cat {int(n[4:7])}" if n != "img_005.png" else None for n in names]


def test_a_dataset_without_captions_stops_before_compute(sd_project):
    import shutil

    bare = sd_project / "data" / "01_raw" / "nocaptions"
    if not bare.exists():
        shutil.copytree(sd_project / "data" / "01_raw" / "mydata", bare)
        (bare / "metadata.jsonl").unlink()
    done = kedro(sd_project, "run", "--pipeline=naive_mydata", "--env=mydata",
                 "--params=datasets.mydata.images=data/01_raw/nocaptions")
    message = _refused(done)
    assert "datasets.mydata.images (data/01_raw/nocaptions) has no metadata.jsonl" in message
    assert "datasets.mydata.instance_prompt is not set" in message
    assert not (sd_project / "data" / "mydata" / "06_models" / "naive_mydata").exists()
