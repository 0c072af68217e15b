"""Every failure of ``kedro run`` is one ``Error:`` paragraph that names the
file, folder or parameter and says what to do, with exit status 1 and no
traceback; whatever can be checked before compute is (issue 18).

Each case runs the real ``kedro`` command line in a scratch copy of the
project: the researcher's own folders of tests/test_own_data.py (12 target
PNGs at 80x80, 16 source PNGs, a tiny 64x64 diffusers pipeline folder, the
``mydata`` environment) or FaceWorld under ``--env=smoke``. The cases that
must fail before compute also check that no output was written.
Skipped files, and the fallback of unusable checkpoints, are in
tests/test_failures_listed.py and tests/core/test_checkpoint_fallback.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests._pipeline_helpers import _scratch_project
from tests.test_own_data import _write_pngs, kedro, own_data_project, tiny_pipeline_folder

MODEL = Path("data/06_models/my_ddpm")
TARGET = Path("data/01_raw/mydata")


def error_paragraph(done: subprocess.CompletedProcess) -> str:
    """The run's ``Error:`` paragraph, once it is checked that the run failed
    with status 1, printed no traceback and ended with that one paragraph."""
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    assert done.stderr.count("Error: ") == 1, done.stderr[-4000:]
    return done.stderr[done.stderr.index("Error: "):].strip()


def nothing_computed(proj: Path, env: str = "mydata") -> bool:
    data = proj / "data" / env
    return not any((data / layer).exists() for layer in ("03_primary", "05_model_input", "07_model_output"))


@pytest.fixture
def own(tmp_path) -> Path:
    return own_data_project(tmp_path)


# --- the folders --------------------------------------------------------------------------


def test_an_empty_target_folder_is_named_before_compute(own):
    for image in (own / TARGET).iterdir():
        image.unlink()
    error = error_paragraph(kedro(own, "run", "--pipeline=curate_mydata", "--env=mydata"))
    assert f"datasets.mydata.images ({TARGET})" in error and "the folder is empty" in error
    assert nothing_computed(own)


def test_images_one_folder_down_name_the_sub_folder(own):
    nested = own / TARGET / "batch1"
    nested.mkdir()
    for image in (own / TARGET).glob("*.png"):
        image.rename(nested / image.name)
    error = error_paragraph(kedro(own, "run", "--pipeline=curate_mydata", "--env=mydata"))
    assert f"files one level down in {TARGET / 'batch1'}" in error
    assert f"point the parameter at {TARGET / 'batch1'} or move the images up" in error
    assert nothing_computed(own)


def test_a_folder_without_one_usable_image_names_it_and_the_size_needed(own):
    shutil.rmtree(own / TARGET)
    _write_pngs(own / TARGET, 2, 32, seed=3)  # below the model's sample_size 64
    for name in ("a.txt", "b.png", "c.jpg"):
        (own / TARGET / name).write_text("not an image")
    error = error_paragraph(kedro(own, "run", "--pipeline=curate_mydata", "--env=mydata"))
    assert f"datasets.mydata.images ({TARGET}): none of its 5 files can be used" in error
    assert "3 not an image PIL can read" in error and "2 too small (under 64x64 pixels)" in error
    assert "datasets.mydata.curation.min_size, or the source model's sample_size 64, sets it" in error
    assert nothing_computed(own)


def test_an_image_folder_that_is_a_file(own):
    shutil.rmtree(own / TARGET)
    (own / TARGET).write_text("a file where the folder should be")
    error = error_paragraph(kedro(own, "run", "--pipeline=curate_mydata", "--env=mydata"))
    assert f"{TARGET} is a file, not a folder" in error
    assert nothing_computed(own)


def test_outputs_that_cannot_be_written_are_named_before_compute(own):
    (own / "data" / "mydata").mkdir()
    (own / "data" / "mydata" / "08_reporting").write_text("a file where the reports folder should be")
    models = own / "data" / "mydata" / "06_models"
    models.mkdir()
    locked = _make_read_only(models)
    try:
        error = error_paragraph(kedro(own, "run", "--pipeline=sdft_mydata", "--env=mydata"))
    finally:
        _undo_read_only(models, locked)
    assert "cannot be written; nothing was computed" in error
    lines = error.splitlines()
    reports = next(line for line in lines if "data/mydata/08_reporting is a file where a folder must be" in line)
    assert "'sdft_mydata.training_history'" in reports and "'mydata_curation_summary'" in reports
    if locked:
        models = next(line for line in lines if "cannot write in data/mydata/06_models (" in line)
        assert "'sdft_mydata.finetuned_model'" in models  # the model folder, written only after training
        assert "parameter 'paths.checkpoints'" in models  # a folder set by a parameter
    assert nothing_computed(own)


def _make_read_only(folder: Path) -> str | None:
    """Read-only for this process: chmod, or for root (which ignores modes) the immutable attribute."""
    import os

    if os.geteuid() != 0:
        folder.chmod(0o555)
        return "chmod"
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    return "chattr" if done.returncode == 0 else None


def _undo_read_only(folder: Path, how: str | None) -> None:
    if how == "chmod":
        folder.chmod(0o755)
    elif how == "chattr":
        subprocess.run(["chattr", "-i", str(folder)], check=True)


# --- the model folder ---------------------------------------------------------------------


BROKEN_MODELS = {
    "no_weights": lambda unet: (unet / "diffusion_pytorch_model.safetensors").unlink(),
    "truncated": lambda unet: (unet / "diffusion_pytorch_model.safetensors").write_bytes(
        (unet / "diffusion_pytorch_model.safetensors").read_bytes()[:5000]),
    "bad_json": lambda unet: (unet / "config.json").write_text('{"sample_size": 64,'),
    "config_mismatch": lambda unet: (unet / "config.json").write_text(json.dumps(
        {**json.loads((unet / "config.json").read_text()), "block_out_channels": [16, 32]})),
}


def test_broken_model_folders_are_found_before_compute(own):
    """Missing and truncated weights, bad JSON, weights of another shape than
    the config, and a wrong channel count: one run, every problem listed."""
    sources, datasets = {}, {}
    for name, damage in BROKEN_MODELS.items():
        folder = own / "data" / "06_models" / name
        shutil.copytree(own / MODEL, folder)
        damage(folder / "unet")
    tiny_pipeline_folder(own / "data" / "06_models" / "four_channels", out_channels=4)
    for name in [*BROKEN_MODELS, "four_channels"]:
        sources[f"s_{name}"] = {"model": f"data/06_models/{name}", "images": "data/01_raw/my_source_images"}
        datasets[f"d_{name}"] = {"source": f"s_{name}", "images": str(TARGET), "curation": {}}
    (own / "conf" / "broken").mkdir()
    (own / "conf" / "broken" / "parameters.yml").write_text(json.dumps({"sources": sources, "datasets": datasets}))
    pipelines = ",".join(f"curate_d_{name}" for name in [*BROKEN_MODELS, "four_channels"])
    error = error_paragraph(kedro(own, "run", f"--pipelines={pipelines}", "--env=broken"))
    assert "5 problem(s) with the run's models; nothing was computed" in error
    unet = Path("data/06_models/{}/unet")
    assert f"{unet}".format("no_weights") + " has no weights file" in error
    assert f"{unet / 'diffusion_pytorch_model.safetensors'}".format("truncated") + " cannot be read" in error
    assert "it is truncated or damaged" in error
    assert f"{unet / 'config.json'}".format("bad_json") + " is not valid JSON" in error
    assert f"{unet / 'diffusion_pytorch_model.safetensors'}".format("config_mismatch") + " does not match" in error
    assert "conv_in.weight (8, 3, 3, 3) in the weights, (16, 3, 3, 3) in the config" in error
    assert "in_channels 3 / out_channels 4; its UNet must take RGB (3) and predict as many channels" in error
    assert nothing_computed(own, "broken")


def test_a_text_conditional_folder_is_refused_naming_its_parts(own):
    """Issue 31: a folder with parts the project does not use (here a Stable Diffusion layout: a text
    encoder and a cross-attention UNet) stops before compute, naming each part, instead of being trained
    with them ignored (as an LDMPipeline folder was before latent models were supported)."""
    import torch
    from diffusers import UNet2DConditionModel

    shutil.rmtree(own / MODEL)
    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=64, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                         attention_head_dim=2, norm_num_groups=4).save_pretrained(str(own / MODEL / "unet"))
    (own / MODEL / "text_encoder").mkdir()
    error = error_paragraph(kedro(own, "run", "--pipeline=sdft_mydata", "--env=mydata"))
    assert f"the source model 'my_source_source_model' ({MODEL}): it has a text encoder (text_encoder/)" in error
    assert "its UNet is a UNet2DConditionModel" in error
    assert "Set sources.my_source.model to a supported model" in error
    assert nothing_computed(own)


def test_a_sample_size_evaluation_cannot_take_is_found_before_compute(own):
    shutil.rmtree(own / MODEL)
    tiny_pipeline_folder(own / MODEL, sample_size=16)
    error = error_paragraph(kedro(own, "run", "--pipeline=sdft_mydata", "--env=mydata"))
    assert "evaluation.lpips_net: LPIPS 'alex' needs images of at least 31x31" in error
    assert "sample_size 16, so the evaluation would fail after training" in error
    assert "Set evaluation.lpips_net to vgg (16 px)" in error
    assert nothing_computed(own)


def test_a_resolution_the_model_does_not_have_names_both(tmp_path):
    proj = _scratch_project(tmp_path)
    done = kedro(proj, "run", "--pipeline=curate_aahq", "--env=smoke", "--params=datasets.aahq.curation.resolution=64")
    error = error_paragraph(done)
    assert "datasets.aahq.curation.resolution is 64 but the source model 'source_model'" in error
    assert "has sample_size 32" in error and "remove the parameter or set it to 32" in error
    assert nothing_computed(proj, "smoke")


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "named"), [
    ("train.lr=inf", "train"),  # issue 18, defect 7: rejected, not a NaN loss after curation
    ("train.steps=abc", "steps: Input should be a valid integer"),  # a value of the wrong type
    ("train.stepz=4", "--params: 'train.stepz': unknown key; did you mean 'steps'?"),  # a misspelt key
])
def test_bad_parameters_stop_before_compute(own, params, named):
    error = error_paragraph(kedro(own, "run", "--pipeline=sdft_mydata", "--env=mydata", f"--params={params}"))
    assert "Invalid parameters" in error and "train" in error and named in error
    assert nothing_computed(own)


def test_an_ilvr_factor_that_does_not_divide_the_resolution_stops_before_the_first_node(tmp_path):
    proj = _scratch_project(tmp_path)
    error = error_paragraph(kedro(proj, "run", "--pipeline=sdft_aahq", "--env=smoke",
                                  "--params=translation.ilvr.factor=5"))
    assert "Invalid parameters in 'translation.ilvr.factor': 5 must divide the image size 32" in error
    assert "use one of [2, 4, 8, 16, 32]" in error
    assert nothing_computed(proj, "smoke") and not (proj / "data" / "smoke" / "01_raw").exists()


def test_every_translation_method_disabled_stops_before_the_first_node(tmp_path):
    proj = _scratch_project(tmp_path)
    off = ",".join(f"translation.{m}.enabled=false" for m in ("sdedit", "ilvr", "egsde", "ddib"))
    error = error_paragraph(kedro(proj, "run", "--pipeline=sdft_aahq", "--env=smoke", f"--params={off}"))
    assert "Invalid parameters in 'translation': every method is disabled" in error
    assert nothing_computed(proj, "smoke")


# --- Kedro's own failures -----------------------------------------------------------------


def test_an_unknown_pipeline_suggests_the_closest_names(tmp_path):
    proj = _scratch_project(tmp_path)
    error = error_paragraph(kedro(proj, "run", "--pipeline=sdfft_aahq", "--env=smoke"))
    assert error.startswith("Error: no pipeline named 'sdfft_aahq' in environment 'smoke'. Did you mean sdft_aahq")
    assert "`KEDRO_ENV=smoke kedro registry list` lists the" in error


def test_an_unknown_environment_lists_the_environments(tmp_path):
    proj = _scratch_project(tmp_path)
    error = error_paragraph(kedro(proj, "run", "--pipeline=sdft_aahq", "--env=smok"))
    assert error.startswith("Error: no environment 'smok':") and "Did you mean smoke?" in error
    assert "local, paper, smoke" in error


def test_a_catalog_without_an_entry_the_pipeline_needs(tmp_path):
    proj = _scratch_project(tmp_path)
    error = error_paragraph(kedro(proj, "run", "--pipeline=curate_aahq", "--env=smoke",
                                  "--params=datasets.aahq.images=aahq_photos"))
    assert "aahq_photos: no catalog entry of that name. Add it to catalog.yml" in error
    assert nothing_computed(proj, "smoke")


def test_the_thread_runner_is_refused_before_the_first_node(tmp_path):
    proj = _scratch_project(tmp_path)
    error = error_paragraph(kedro(proj, "run", "--pipeline=sdft_aahq", "--env=smoke", "--runner=ThreadRunner"))
    assert error.startswith("Error: --runner=ThreadRunner is not supported by this project")
    assert "global torch random stream" in error and "Run without --runner" in error
    assert nothing_computed(proj, "smoke")


def test_verbose_keeps_the_traceback(tmp_path):
    proj = _scratch_project(tmp_path)
    done = kedro(proj, "run", "--pipeline=sdfft_aahq", "--env=smoke", "--verbose")
    assert done.returncode == 1 and "Traceback" in done.stdout + done.stderr
    assert "Error: no pipeline named 'sdfft_aahq'" in done.stderr


# --- failures during compute: still one paragraph -----------------------------------------


@pytest.mark.slow
def test_a_nan_loss_names_the_node_and_what_to_change(own):
    # a huge learning rate overflows the weights after the first update
    error = error_paragraph(kedro(own, "run", "--pipeline=sdft_mydata", "--env=mydata",
                                  "--to-nodes=sdft_mydata.finetune", "--params=train.lr=1e30"))
    assert error.startswith("Error: in node 'sdft_mydata.finetune': non-finite loss")
    assert "training stopped before the update" in error and "Lower 'train.lr'" in error


def test_more_shots_than_images_stop_before_compute(own):
    error = error_paragraph(kedro(own, "run", "--pipeline=curate_mydata", "--env=mydata",
                                  "--params=datasets.mydata.kind=few_shot,datasets.mydata.curation.n_shot=50"))
    assert f"datasets.mydata.curation.n_shot is 50 but {TARGET} holds 12 file(s)" in error
    assert "need 52; lower n_shot or add images" in error
    assert nothing_computed(own)


def test_a_threshold_that_keeps_nothing_names_the_node_and_the_parameter(own):
    error = error_paragraph(kedro(own, "run", "--pipeline=curate_mydata", "--env=mydata",
                                  "--params=datasets.mydata.curation.prompt=a photo,"
                                  "datasets.mydata.curation.threshold=0.99"))
    assert error.startswith("Error: in node 'curate_mydata': no image scored at or above "
                            "datasets.mydata.curation.threshold=0.99")
    assert "lower datasets.mydata.curation.threshold" in error
    assert not (own / "data" / "mydata" / "03_primary").exists()


def test_failure_message_unwraps_kedro_and_labels_the_unexpected():
    from kedro.io import DatasetError

    from diffusion_transfer.cli import failure_message
    from diffusion_transfer.core.models.unet import ModelLoadError

    try:
        try:
            raise ModelLoadError("could not load the UNet from 'data/06_models/x': bad weights")
        except ModelLoadError as inner:
            raise DatasetError("Failed while loading data from dataset UNetDataset(path=...).") from inner
    except DatasetError as outer:
        outer.add_note("in node 'curate_x':")
        assert failure_message(outer) == "in node 'curate_x': could not load the UNet from 'data/06_models/x': " \
                                         "bad weights"
    unexpected = KeyError("img_000.png")
    assert failure_message(unexpected) == "KeyError: 'img_000.png' (Run again with --verbose to see the traceback.)"
